package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/suggest"
	"github.com/axocoatl/isolation/internal/tracing"
)

func init() {
	register(command{name: "run", summary: "run one tool call and print its output JSON", run: runRun})
}

// toolNames lists the catalog's tools and built-ins.
func toolNames(e *executor.Executor) []string {
	tools, _ := e.Tools()
	names := make([]string, len(tools))
	for i, t := range tools {
		names[i] = t.Name
	}
	return names
}

// maxInputBytes bounds input read from stdin or a file.
const maxInputBytes = 16 << 20

// callFlags are the flags of commands that make calls (run, bench).
type callFlags struct {
	commonFlags
	tier      string
	timeout   time.Duration
	input     string
	inputFile string
}

func (c *callFlags) add(fs *flag.FlagSet) {
	c.commonFlags.add(fs)
	fs.StringVar(&c.tier, "tier", "", "run only in this tier: None, Wasmtime, Oci or Firecracker (no fallback)")
	fs.DurationVar(&c.timeout, "timeout", 0, "call timeout (default: the tool's timeout_ms, else 10s)")
	fs.StringVar(&c.input, "input", "", "input JSON")
	fs.StringVar(&c.inputFile, "input-file", "", "read the input JSON from this file")
}

func (c *callFlags) options() ([]executor.Option, error) {
	var opts []executor.Option
	if c.tier != "" {
		t, err := isolation.ParseTier(c.tier)
		if err != nil {
			return nil, usagef("--tier: %v", err)
		}
		opts = append(opts, executor.WithTier(t))
	}
	if c.timeout < 0 {
		return nil, usagef("--timeout must be positive")
	}
	if c.timeout > 0 {
		opts = append(opts, executor.WithTimeout(c.timeout))
	}
	return opts, nil
}

// readInput returns the input from --input, --input-file or stdin (ifStdin).
func (c *callFlags) readInput(stdin io.Reader, ifStdin bool, dflt string) ([]byte, error) {
	switch {
	case c.input != "" && c.inputFile != "":
		return nil, usagef("give --input or --input-file, not both")
	case c.input != "":
		return []byte(c.input), nil
	case c.inputFile != "":
		f, err := os.Open(c.inputFile)
		if err != nil {
			return nil, isolation.Errorf(isolation.ErrInvalidInput, "--input-file: %v", err)
		}
		defer f.Close()
		return readLimited(f)
	case ifStdin:
		return readLimited(stdin)
	}
	return []byte(dflt), nil
}

func readLimited(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxInputBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxInputBytes {
		return nil, isolation.Errorf(isolation.ErrInvalidInput, "input is over %d bytes", maxInputBytes)
	}
	return b, nil
}

func runRun(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	var cf callFlags
	cf.add(fs)
	envelope := fs.Bool("json", false, "print the envelope {output, tier, degraded, backend, duration_ms, stdout, stderr, call_id, limits}")
	traceparent := fs.String("traceparent", os.Getenv("TRACEPARENT"), "W3C trace context the call's spans join when tracing is configured (default $TRACEPARENT; $TRACESTATE goes with it)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one tool name, got %d arguments", len(pos))
	}
	opts, err := cf.options()
	if err != nil {
		return err
	}
	input, err := cf.readInput(stdin, true, "")
	if err != nil {
		return err
	}
	if *traceparent != "" {
		ctx = tracing.Extract(ctx, *traceparent, os.Getenv("TRACESTATE"))
		if !trace.SpanContextFromContext(ctx).IsValid() {
			return usagef("--traceparent: %q is not a W3C traceparent (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)", *traceparent)
		}
	}
	e, _, err := cf.executor(stderr)
	if err != nil {
		return err
	}
	defer e.Close()
	res, err := e.Execute(ctx, pos[0], input, opts...)
	if err != nil {
		var ie *isolation.Error
		if errors.As(err, &ie) && ie.Stdout != "" {
			fmt.Fprintf(stderr, "tool stdout (tail):\n%s\n", ie.Stdout)
		}
		if errors.As(err, &ie) && ie.Stderr != "" {
			fmt.Fprintf(stderr, "tool stderr (tail):\n%s\n", ie.Stderr)
		}
		if errors.Is(err, isolation.ErrToolNotFound) {
			// The library's message names no host path (it reaches HTTP clients); the operator
			// at the terminal gets the tools root and the nearest name.
			return fmt.Errorf("%w (tools root %s)%s", err, e.Catalog().Root(), suggest.DidYouMean(pos[0], toolNames(e)))
		}
		return err
	}
	if res.Degraded {
		fmt.Fprintf(stderr, "axoiso run: warning: %q ran in %s, weaker than its ideal tier %s (use --strict to refuse)\n", res.Tool, res.Tier, res.Ideal)
	}
	// What axoiso prints is UTF-8 JSON, as the HTTP API's responses: stray bytes a tool wrote
	// inside its output's strings (json.Valid accepts them) become U+FFFD.
	if !utf8.Valid(res.Output) {
		res.Output = bytes.ToValidUTF8(res.Output, []byte("\uFFFD"))
	}
	if *envelope {
		return json.NewEncoder(stdout).Encode(res)
	}
	_, err = fmt.Fprintf(stdout, "%s\n", res.Output)
	return err
}
