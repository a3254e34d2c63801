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
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"

	"github.com/axocoatl/isolation/internal/suggest"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/axoiso"

	// The container init: libcontainer re-executes this binary as each container's init.
	_ "github.com/axocoatl/isolation/internal/containerinit"
)

// Exit codes: part of the CLI contract. Calls exit with their outcome's code from isolation's
// outcome table (isolation.Outcomes); these are the ones the CLI itself decides.
const (
	exitOK      = 0
	exitInvalid = 2 // bad usage (like an invalid tool name or input)
)

// version may be set at build time with -ldflags "-X main.version=…"; otherwise versionString
// derives it from the build info Go embeds (module version, VCS revision).
var version = ""

// versionString is this binary's version: the -X version if set, else the main module's version
// and the VCS revision the binary was built from ("(devel)" plus the revision for a checkout).
func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" {
		v += " " + rev + dirty
	}
	return v
}

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
		if len(args) == 2 && args[0] == "help" {
			// axoiso help COMMAND is COMMAND --help.
			return run(ctx, []string{args[1], "--help"}, stdin, stdout, stderr)
		}
		usage(stdout)
		if len(args) == 0 {
			return exitInvalid
		}
		return exitOK
	}
	if args[0] == "--version" || args[0] == "version" {
		fmt.Fprintf(stdout, "axoiso %s %s\n", versionString(), runtime.Version())
		return exitOK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "axoiso: unknown command %q%s (try axoiso help)\n", args[0], suggest.DidYouMean(args[0], commandNames()))
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

// exitCode maps an error to the documented exit status: bad usage is exitInvalid, anything else
// its outcome's exit code (1 when nothing typed it).
func exitCode(err error) int {
	var u usageError
	var ce *axoiso.ConfigError
	if errors.As(err, &u) || errors.As(err, &ce) {
		return exitInvalid
	}
	return isolation.OutcomeOf(err).ExitCode
}

type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

func commandNames() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "axoiso runs tools (JSON in, JSON out) in the isolation tier each one needs.")
	fmt.Fprintln(w, "\nUsage: axoiso COMMAND [flags] [args]\n\nCommands:")
	for _, n := range completionCommands() {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nExit codes: 0 ok, 2 invalid name/input/usage, 3 tool not found or invalid, 4 tier unavailable or downgrade")
	fmt.Fprintln(w, "refused, 5 tool failed or bad output, 6 timeout, 7 memory limit, 8 sandbox failed, 9 busy, 130 interrupted,")
	fmt.Fprintln(w, "1 anything else.")
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
