// Package mcpserver exposes an executor's tools over the Model Context Protocol, with the official
// MCP Go SDK: every catalog tool (and built-in) is an MCP tool, and a call runs in the tool's tier.
//
// Tool mapping:
//   - name and description are the tool's; inputSchema is tool.json's input_schema when it is an
//     object schema ("type": "object"), and {"type":"object"} when the tool declares none.
//   - MCP arguments are always a JSON object. A tool whose input_schema is not an object schema
//     (an array, a string, a schema without "type": "object") is offered with the input wrapped:
//     inputSchema {"type":"object","properties":{"input":<schema>},"required":["input"]}, and the
//     call passes arguments.input to the tool. Such tools carry _meta {"axocoatl/input": "wrapped"}.
//   - Missing or null arguments are the empty object {}.
//   - A successful call returns the output JSON as text content, and as structuredContent: the
//     output itself when it is an object, {"result": output} otherwise (older clients require an
//     object). _meta carries axocoatl/call_id, axocoatl/tier, axocoatl/degraded.
//   - Every tool failure (invalid input, timeout, memory limit, bad output, tier unavailable, server
//     busy, …) is a result with isError set, a text message naming the error kind and the call id,
//     and structuredContent {"error":{"kind","message","call_id","tier","retryable"}} with the kind
//     of isolation's outcome table, as the HTTP API; never a protocol error and never a crashed
//     server. Only an unknown tool name is a protocol error, as the MCP spec asks (broken tool
//     folders are left out of the list, so calling one is such an error).
//   - Output bytes that are not UTF-8 (json.Valid accepts them inside strings) become U+FFFD.
//
// The tool list follows the catalog: it is re-read on every tools/list, and on a tools/call of a
// name the server does not know yet.
package mcpserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/tracing"
)

// Meta keys set on tools and results.
const (
	MetaCallID   = "axocoatl/call_id"
	MetaTier     = "axocoatl/tier"
	MetaDegraded = "axocoatl/degraded"
	MetaInput    = "axocoatl/input"
	// MetaLimits is the call's executor.Limits: effective limits and what was lowered to a ceiling.
	MetaLimits = "axocoatl/limits"
	// MetaStdout and MetaStderr carry the bounded tails of the tool's stdout and stderr.
	MetaStdout = "axocoatl/stdout"
	MetaStderr = "axocoatl/stderr"
)

// Config configures a server. The zero value is usable.
type Config struct {
	// Name and Version identify the server to clients (default "axoiso", "dev").
	Name, Version string
	// Logger receives the server's records (tool list changes, failures); nil logs nowhere. For
	// stdio it must not write to stdout.
	Logger *slog.Logger
	// Gate, when set, is called before each call: it returns a release func, or an error (of
	// class isolation.ErrBusy when over a concurrency limit) that fails the call with isError.
	Gate func(ctx context.Context, tool string) (release func(), err error)
	// Observe, when set, is called after each call that ran (for metrics).
	Observe func(tool string, res *executor.Result, err error, d time.Duration)
	// Timeout, when > 0, is passed to every call as executor.WithTimeout.
	Timeout time.Duration
	// Stop, when set, cancels the calls in flight when it is done (a server's grace period is
	// over): their clients get isError canceled results. A call's own context does not end with
	// the HTTP server's.
	Stop context.Context
}

// Server is an MCP server over one executor. Safe for concurrent use.
type Server struct {
	exec *executor.Executor
	opts Config
	log  *slog.Logger
	mcp  *mcp.Server

	mu    sync.Mutex       // protects known and serializes syncs
	known map[string]entry // tool name → what was registered
}

// entry is what Sync registered for a tool, to notice changes.
type entry struct {
	wrapped bool
	sig     string // description + input schema
}

// New returns a server offering exec's tools.
func New(exec *executor.Executor, opts Config) *Server {
	if opts.Name == "" {
		opts.Name = "axoiso"
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	s := &Server{exec: exec, opts: opts, log: opts.Logger, known: map[string]entry{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.mcp = mcp.NewServer(&mcp.Implementation{Name: opts.Name, Version: opts.Version}, &mcp.ServerOptions{
		Logger: s.log,
		//lint:ignore SA1019 Capabilities would drop the SDK's default capabilities: HasTools adds tools to them
		HasTools: true,
		Instructions: "Tools run in isolated sandboxes (in-process, WebAssembly, containers or microVMs). " +
			"Each call takes a JSON object and returns JSON; failures come back as tool errors with a kind and a call id.",
	})
	s.mcp.AddReceivingMiddleware(s.syncMiddleware)
	s.Sync()
	return s
}

// MCP returns the underlying SDK server (for transports this package does not wrap).
func (s *Server) MCP() *mcp.Server { return s.mcp }

// Run serves one session over t until ctx ends or the client disconnects.
func (s *Server) Run(ctx context.Context, t mcp.Transport) error { return s.mcp.Run(ctx, t) }

// HTTPHandler returns the streamable HTTP transport for this server: stateful sessions, JSON
// responses, sessions closed when idle and held to a bound (see HTTPConfig).
func (s *Server) HTTPHandler(o HTTPConfig) http.Handler {
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = DefaultSessionTimeout
	}
	if o.MaxSessions == 0 {
		o.MaxSessions = DefaultMaxSessions
	}
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return s.mcp }, &mcp.StreamableHTTPOptions{
		JSONResponse:        true,
		Logger:              s.log,
		SessionTimeout:      o.SessionTimeout,
		MaxRequestBodyBytes: o.MaxBodyBytes,
	})
	return &sessionCap{next: h, srv: s.mcp, max: o.MaxSessions, log: s.log, shutdown: o.Shutdown, sessions: map[string]*sessionUse{}}
}

// ServeStdio serves exec's tools over stdin/stdout until ctx ends or stdin closes. Logs must go
// elsewhere than stdout (opts.Logger on stderr).
func ServeStdio(ctx context.Context, exec *executor.Executor, opts Config) error {
	err := New(exec, opts).Run(ctx, &mcp.StdioTransport{})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (s *Server) syncMiddleware(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		switch method {
		case "tools/list":
			s.Sync()
		case "tools/call":
			if p, ok := req.GetParams().(*mcp.CallToolParamsRaw); ok && !s.isKnown(p.Name) {
				s.Sync()
			}
		}
		return next(ctx, method, req)
	}
}

func (s *Server) isKnown(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.known[name]
	return ok
}

// Sync makes the MCP tool list match the executor's tools: new tools are added, removed ones
// dropped, changed ones replaced. Broken tool folders are logged and left out.
func (s *Server) Sync() {
	tools, errs := s.exec.Tools()
	for _, err := range errs {
		s.log.Warn("tool left out of MCP", slog.String("error", err.Error()))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]bool, len(tools))
	for _, t := range tools {
		seen[t.Name] = true
		mt, wrapped := toolFor(t)
		e := entry{wrapped: wrapped, sig: mt.Description + "\x00" + string(t.InputSchema)}
		// AddTool replaces and notifies clients of a changed list: re-adding unchanged tools on
		// every tools/list would flood them with notifications.
		if old, ok := s.known[t.Name]; ok && old == e {
			continue
		}
		s.known[t.Name] = e
		s.mcp.AddTool(mt, s.handler(t.Name, wrapped))
	}
	var gone []string
	for name := range s.known {
		if !seen[name] {
			gone = append(gone, name)
			delete(s.known, name)
		}
	}
	if len(gone) > 0 {
		s.mcp.RemoveTools(gone...)
	}
}

// toolFor maps a catalog tool to an MCP tool; wrapped reports whether its input is wrapped in an
// {"input": …} object because its schema is not an object schema.
func toolFor(t *catalog.Tool) (*mcp.Tool, bool) {
	mt := &mcp.Tool{Name: t.Name, Description: t.Description}
	if mt.Description == "" {
		mt.Description = fmt.Sprintf("The %s tool (runtime %s).", t.Name, t.Runtime)
	}
	schema := t.InputSchema
	if len(bytes.TrimSpace(schema)) == 0 || string(bytes.TrimSpace(schema)) == "null" {
		mt.InputSchema = json.RawMessage(`{"type":"object"}`)
		return mt, false
	}
	var probe struct {
		Type any `json:"type"`
	}
	if json.Unmarshal(schema, &probe) == nil && probe.Type == "object" {
		mt.InputSchema = schema
		return mt, false
	}
	mt.InputSchema = json.RawMessage(`{"type":"object","properties":{"input":` + string(schema) + `},"required":["input"],"additionalProperties":false}`)
	mt.Meta = mcp.Meta{MetaInput: "wrapped"}
	mt.Description += " (MCP: pass the tool's input as the \"input\" argument.)"
	return mt, true
}

func (s *Server) handler(name string, wrapped bool) mcp.ToolHandler {
	return func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		callID := uuid.NewString()
		input := []byte(req.Params.Arguments)
		if t := bytes.TrimSpace(input); len(t) == 0 || string(t) == "null" {
			input = []byte("{}")
		}
		if wrapped {
			var args map[string]json.RawMessage
			if err := json.Unmarshal(input, &args); err != nil || args["input"] == nil {
				return errorResult(callID, &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: name, CallID: callID,
					Message: `arguments must be an object with an "input" member holding the tool's input`}), nil
			}
			input = args["input"]
		}
		if s.opts.Gate != nil {
			release, err := s.opts.Gate(ctx, name)
			if err != nil {
				return errorResult(callID, err), nil
			}
			defer release()
		}
		if s.opts.Stop != nil {
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(ctx)
			defer cancel()
			defer context.AfterFunc(s.opts.Stop, cancel)()
		}
		ctx = traceContext(ctx, req)
		opts := []executor.Option{executor.WithCallID(callID)}
		if s.opts.Timeout > 0 {
			opts = append(opts, executor.WithTimeout(s.opts.Timeout))
		}
		start := time.Now()
		res, err := s.exec.Execute(ctx, name, input, opts...)
		if s.opts.Observe != nil {
			s.opts.Observe(name, res, err, time.Since(start))
		}
		if err != nil {
			return errorResult(callID, err), nil
		}
		return successResult(res), nil
	}
}

// traceContext is ctx with the caller's W3C trace context: params._meta's traceparent and
// tracestate (MCP's convention, on every transport), else the HTTP request's headers (/mcp).
func traceContext(ctx context.Context, req *mcp.CallToolRequest) context.Context {
	meta := req.Params.GetMeta()
	if tp, ok := meta["traceparent"].(string); ok && tp != "" {
		ts, _ := meta["tracestate"].(string)
		return tracing.Extract(ctx, tp, ts)
	}
	if req.Extra != nil && req.Extra.Header != nil {
		return tracing.Extract(ctx, req.Extra.Header.Get("traceparent"), req.Extra.Header.Get("tracestate"))
	}
	return ctx
}

func successResult(res *executor.Result) *mcp.CallToolResult {
	out := res.Output
	if !utf8.Valid(out) {
		// json.Valid accepts any bytes inside strings; structuredContent would carry them raw.
		out = bytes.ToValidUTF8(out, []byte("\uFFFD"))
	}
	var structured any = json.RawMessage(out)
	if !isObject(out) {
		structured = map[string]json.RawMessage{"result": out}
	}
	return &mcp.CallToolResult{
		Content:           []mcp.Content{&mcp.TextContent{Text: string(out)}},
		StructuredContent: structured,
		Meta:              successMeta(res),
	}
}

// successMeta is a result's _meta: the call's id, tier and limits, and the tool's stdout and
// stderr tails when it wrote any (its result is output.json, not stdout).
func successMeta(res *executor.Result) mcp.Meta {
	m := mcp.Meta{MetaCallID: res.CallID, MetaTier: res.Tier.String(), MetaDegraded: res.Degraded, MetaLimits: res.Limits}
	if res.Stdout != "" {
		m[MetaStdout] = res.Stdout
	}
	if res.Stderr != "" {
		m[MetaStderr] = res.Stderr
	}
	return m
}

type errorBody struct {
	Error errorDetail `json:"error"`
}

// errorDetail is the HTTP API's error body, minus what MCP results carry elsewhere.
type errorDetail struct {
	Kind      string `json:"kind"`
	Message   string `json:"message"`
	CallID    string `json:"call_id,omitempty"`
	Tier      string `json:"tier,omitempty"`
	ExitCode  *int   `json:"exit_code,omitempty"`
	Stderr    string `json:"stderr,omitempty"`
	Stdout    string `json:"stdout,omitempty"`
	Retryable bool   `json:"retryable,omitempty"`
}

// errorResult is the isError result of a failed call: the kind and retryability from
// isolation's outcome table, whatever err is (a class, the caller's context, or internal).
func errorResult(callID string, err error) *mcp.CallToolResult {
	o := isolation.OutcomeOf(err)
	d := errorDetail{Kind: o.Kind, Message: err.Error(), CallID: callID, Retryable: o.Retryable}
	var ie *isolation.Error
	if errors.As(err, &ie) {
		if ie.HasTier {
			d.Tier = ie.Tier.String()
		}
		if errors.Is(err, isolation.ErrToolFailed) {
			ec := ie.ExitCode
			d.ExitCode = &ec
		}
		d.Stderr, d.Stdout = ie.Stderr, ie.Stdout
	}
	text := fmt.Sprintf("%s: %s (call %s)", d.Kind, d.Message, callID)
	if o.Retryable {
		text += "; retry later"
	}
	if d.Stderr != "" {
		text += "\nstderr:\n" + d.Stderr
	}
	if d.Stdout != "" {
		text += "\nstdout:\n" + d.Stdout
	}
	return &mcp.CallToolResult{
		IsError:           true,
		Content:           []mcp.Content{&mcp.TextContent{Text: text}},
		StructuredContent: errorBody{d},
		Meta:              mcp.Meta{MetaCallID: callID},
	}
}

func isObject(b []byte) bool {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '{':
			return true
		default:
			return false
		}
	}
	return false
}
