package main

import (
	"flag"
	"io"
	"log/slog"
	"os"

	"github.com/axocoatl/isolation/axoiso"
	"github.com/axocoatl/isolation/executor"
)

// commonFlags are the flags every command that builds an executor takes.
type commonFlags struct {
	tools, config, logLevel string
	logJSON, strict         bool
}

func (c *commonFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&c.tools, "tools", "", "tools root (default $"+axoiso.EnvTools+", the config's tools_root, or "+axoiso.DefaultToolsRoot+")")
	fs.StringVar(&c.config, "config", "", "config file (default $"+axoiso.EnvConfig+" or "+axoiso.DefaultConfigPath+" if present)")
	fs.StringVar(&c.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	fs.BoolVar(&c.logJSON, "log-json", false, "log as JSON lines")
	fs.BoolVar(&c.strict, "strict", false, "refuse a fallback to a weaker tier than the tool's ideal one")
}

// config loads the config file and lets flags win.
func (c *commonFlags) configAndLogger(stderr io.Writer) (axoiso.Config, *slog.Logger, error) {
	log, err := newLogger(stderr, c.logLevel, c.logJSON)
	if err != nil {
		return axoiso.Config{}, nil, err
	}
	cfg, err := axoiso.LoadConfig(c.config)
	if err != nil {
		return cfg, nil, err
	}
	// Precedence: flag, environment, config file, default.
	if v := os.Getenv(axoiso.EnvTools); v != "" {
		cfg.ToolsRoot = v
	}
	if c.tools != "" {
		cfg.ToolsRoot = c.tools
	}
	if c.strict {
		cfg.Strict = true
	}
	cfg.Logger = log
	return cfg.WithDefaults(), log, nil
}

func (c *commonFlags) executor(stderr io.Writer) (*executor.Executor, *slog.Logger, error) {
	cfg, log, err := c.configAndLogger(stderr)
	if err != nil {
		return nil, nil, err
	}
	e, err := axoiso.New(cfg)
	return e, log, err
}
