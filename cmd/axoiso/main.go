// Command axoiso runs tools under the isolation each one deserves. See README.md for the contract
// (commands, flags, exit codes); this file only wires flags to the library.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/axocoatl/isolation"
	// The container init: libcontainer re-executes this binary as each container's init.
	_ "github.com/axocoatl/isolation/internal/containerinit"
)

// Exit codes: part of the CLI contract.
const (
	exitOK          = 0
	exitOther       = 1
	exitInvalid     = 2 // invalid tool name or input, or bad usage
	exitNotFound    = 3
	exitUnavailable = 4 // tier unavailable or downgrade refused
	exitToolFailed  = 5 // tool failed, output missing, invalid or too large
	exitTimeout     = 6
	exitMemory      = 7
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

var commands = map[string]command{}

func register(c command) { commands[c.name] = c }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return exitInvalid
		}
		return exitOK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "axoiso: unknown command %q (try axoiso help)\n", args[0])
		return exitInvalid
	}
	err := c.run(ctx, args[1:], stdin, stdout, stderr)
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintf(stderr, "axoiso %s: %s\n", c.name, oneLine(err.Error()))
	return exitCode(err)
}

// exitCode maps an error class to the documented exit status.
func exitCode(err error) int {
	var u usageError
	switch {
	case errors.As(err, &u), errors.Is(err, isolation.ErrInvalidToolName), errors.Is(err, isolation.ErrInvalidInput):
		return exitInvalid
	case errors.Is(err, isolation.ErrToolNotFound):
		return exitNotFound
	case errors.Is(err, isolation.ErrTierUnavailable):
		return exitUnavailable
	case errors.Is(err, isolation.ErrToolFailed), errors.Is(err, isolation.ErrOutputMissing),
		errors.Is(err, isolation.ErrOutputInvalid), errors.Is(err, isolation.ErrOutputTooLarge):
		return exitToolFailed
	case errors.Is(err, isolation.ErrTimeout):
		return exitTimeout
	case errors.Is(err, isolation.ErrMemoryLimit):
		return exitMemory
	}
	return exitOther
}

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func usage(w io.Writer) {
	fmt.Fprintln(w, "axoiso runs tools (JSON in, JSON out) in the isolation tier each one needs.")
	fmt.Fprintln(w, "\nUsage: axoiso COMMAND [flags] [args]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nExit codes: 0 ok, 2 invalid name/input/usage, 3 tool not found, 4 tier unavailable or downgrade refused,")
	fmt.Fprintln(w, "5 tool failed or bad output, 6 timeout, 7 memory limit, 1 anything else.")
}

// parseInterspersed parses flags that may come before or after positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// parseFlagsOnly parses a command that takes flags and no arguments.
func parseFlagsOnly(fs *flag.FlagSet, args []string) error {
	pos, err := parseInterspersed(fs, args)
	if err == nil && len(pos) > 0 {
		err = usagef("unexpected argument %q", pos[0])
	}
	return err
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("axoiso "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// newLogger logs to stderr; quiet by default so stdout/stderr stay a clean contract.
func newLogger(stderr io.Writer, level string, jsonFormat bool) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level: %v", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	if jsonFormat {
		return slog.New(slog.NewJSONHandler(stderr, opts)), nil
	}
	return slog.New(slog.NewTextHandler(stderr, opts)), nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
