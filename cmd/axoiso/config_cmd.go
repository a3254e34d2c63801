package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/axocoatl/isolation/axoiso"
)

func init() {
	register(command{name: "config", summary: "config check: print the effective config and where each value came from, or its errors", run: runConfig})
}

func runConfig(_ context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stderr, "Usage: axoiso config check [--config FILE] [--tools DIR] [--strict] [--json]")
			return flag.ErrHelp
		}
		return usagef("want: axoiso config check [--config FILE] [--json]")
	}
	fs := newFlagSet("config check", stderr)
	var cf commonFlags
	cf.add(fs)
	asJSON := fs.Bool("json", false, `print {"file":…, "settings":[{"key","value","source"}]}`)
	if err := parseFlagsOnly(fs, args[1:]); err != nil {
		return err
	}
	cfg, src, err := axoiso.ReadConfig(cf.config)
	if err != nil {
		var ce *axoiso.ConfigError
		if errors.As(err, &ce) {
			fmt.Fprintf(stderr, "config %s:\n", ce.File)
			for _, p := range ce.Problems {
				fmt.Fprintf(stderr, "  %s\n", p)
			}
			return usagef("%s: %d problem(s)", ce.File, len(ce.Problems))
		}
		return err
	}
	// Where each value comes from: the same precedence as every command (flag, environment,
	// file, default).
	source := map[string]string{}
	for _, k := range src.Keys {
		source[k] = "file"
	}
	if v := os.Getenv(axoiso.EnvTools); v != "" {
		cfg.ToolsRoot, source["tools_root"] = v, "env "+axoiso.EnvTools
	}
	if cf.tools != "" {
		cfg.ToolsRoot, source["tools_root"] = cf.tools, "flag --tools"
	}
	if cf.strict {
		cfg.Strict, source["strict"] = true, "flag --strict"
	}
	if source["oci.bundle_root"] == "" {
		source["oci.bundle_root"] = "tools_root"
	}
	type row struct {
		Key    string          `json:"key"`
		Value  json.RawMessage `json:"value"`
		Source string          `json:"source"`
	}
	var rows []row
	for _, s := range cfg.WithDefaults().Settings() {
		from := source[s.Key]
		if from == "" {
			from = "default"
		}
		rows = append(rows, row{s.Key, s.Value, from})
	}
	file := src.Path
	if !src.Present {
		file += " (absent: built-in defaults)"
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]any{"file": file, "settings": rows})
	}
	fmt.Fprintf(stdout, "# config file %s\n", file)
	width := 0
	for _, r := range rows {
		width = max(width, len(r.Key)+3+len(r.Value))
	}
	width = min(width, 60)
	for _, r := range rows {
		fmt.Fprintf(stdout, "%-*s  # %s\n", width, r.Key+" = "+string(r.Value), r.Source)
	}
	return nil
}
