package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/axocoatl/isolation/axoiso"
	"github.com/axocoatl/isolation/egress"
)

func init() {
	register(command{name: "tiers", summary: "show each tier: available or not, why, and the fix", run: runTiers})
	register(command{name: "tools", summary: "list the tool catalog", run: runTools})
}

func runTiers(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("tiers", stderr)
	var cf commonFlags
	cf.add(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	cfg, _, err := cf.configAndLogger(stderr)
	if err != nil {
		return err
	}
	statuses := axoiso.Tiers(ctx, cfg)
	if *asJSON {
		return writeJSON(stdout, statuses)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIER\tAVAILABLE\tBACKEND\tREASON\tFIX")
	for _, s := range statuses {
		fmt.Fprintf(tw, "%s\t%v\t%s\t%s\t%s\n", s.Tier, s.Available, dash(s.Backend), dash(s.Reason), dash(s.Fix))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range statuses {
		if s.Network != "" {
			fmt.Fprintf(stdout, "%s network policies: %s\n", s.Tier, s.Network)
		}
	}
	return nil
}

func runTools(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("tools", stderr)
	var cf commonFlags
	cf.add(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlagsOnly(fs, args); err != nil {
		return err
	}
	e, log, err := cf.executor(stderr)
	if err != nil {
		return err
	}
	defer e.Close()
	tools, errs := e.Tools()
	for _, err := range errs {
		log.Warn("broken tool folder", "error", err)
	}
	type row struct {
		Name        string          `json:"name"`
		Runtime     string          `json:"runtime"`
		Tier        string          `json:"tier"`
		Degraded    bool            `json:"degraded"`
		Description string          `json:"description,omitempty"`
		Dir         string          `json:"dir,omitempty"`
		InputSchema json.RawMessage `json:"input_schema,omitempty"`
		TimeoutMS   int64           `json:"timeout_ms,omitempty"`
		MemoryMB    int             `json:"memory_mb,omitempty"`
		// Egress is the effective network policy; EgressNotGranted what was asked and not granted.
		Egress           []string            `json:"egress,omitempty"`
		EgressNotGranted []egress.NotGranted `json:"egress_not_granted,omitempty"`
		Error            string              `json:"error,omitempty"`
	}
	rows := make([]row, 0, len(tools))
	for _, t := range tools {
		r := row{Name: t.Name, Runtime: t.Runtime.String(), Description: t.Description, Dir: t.Dir, InputSchema: t.InputSchema, TimeoutMS: t.TimeoutMS, MemoryMB: t.MemoryMB}
		pol, ng := e.Egress(t)
		r.Egress, r.EgressNotGranted = pol.Strings(), ng
		if len(r.Egress) == 0 {
			r.Egress = nil
		}
		if sel, err := e.Select(ctx, t); err != nil {
			r.Tier, r.Error = "-", err.Error()
		} else {
			r.Tier, r.Degraded = sel.Tier.String(), sel.Degraded
		}
		rows = append(rows, r)
	}
	if *asJSON {
		return writeJSON(stdout, rows)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tRUNTIME\tTIER\tEGRESS\tDESCRIPTION")
	for _, r := range rows {
		tier := r.Tier
		if r.Degraded {
			tier += " (downgrade)"
		}
		net := strings.Join(r.Egress, ",")
		if len(r.EgressNotGranted) > 0 {
			net += fmt.Sprintf(" (%d not granted)", len(r.EgressNotGranted))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.Runtime, tier, dash(strings.TrimSpace(net)), dash(r.Description))
	}
	return tw.Flush()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
