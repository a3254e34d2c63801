package server

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/tracing"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/server/mcpserver"
)

//go:embed openapi.json
var openAPI []byte

// route is one entry of the API; the OpenAPI document is tested against this table.
type route struct {
	method, path string
	h            func(*Server) http.HandlerFunc
}

var apiRoutes = []route{
	{"POST", "/v1/tools/{name}/execute", func(s *Server) http.HandlerFunc { return s.execute }},
	{"POST", "/v1/tools/{name}/call", func(s *Server) http.HandlerFunc { return s.call }},
	{"GET", "/v1/tools", func(s *Server) http.HandlerFunc { return s.listTools }},
	{"GET", "/v1/tools/{name}", func(s *Server) http.HandlerFunc { return s.getTool }},
	{"GET", "/v1/tiers", func(s *Server) http.HandlerFunc { return s.tiers }},
	{"GET", "/healthz", func(s *Server) http.HandlerFunc { return s.healthz }},
	{"GET", "/metrics", func(s *Server) http.HandlerFunc { return s.metrics.Handler().ServeHTTP }},
	{"GET", "/openapi.json", func(s *Server) http.HandlerFunc { return serveOpenAPI }},
}

func (s *Server) routes() *http.ServeMux {
	mux := http.NewServeMux()
	for _, r := range apiRoutes {
		mux.HandleFunc(r.method+" "+r.path, r.h(s))
	}
	if s.mcp != nil {
		mux.Handle("/mcp", s.mcpHandler())
	}
	return mux
}

// mcpHandler is the streamable HTTP transport. When shutdown begins, its event streams (GET) end,
// each once its session has no call in flight: a client whose stream ends gives up on its calls.
//
// When the grace period is over, the HTTP requests' contexts end together with the MCP calls
// (stopCalls); the SDK would then stop waiting for a cancelled call's answer and reply with
// nothing. So an MCP request's context outlives the HTTP server's by up to drainTimeout, enough
// for the answer; a client that leaves still ends it at once.
func (s *Server) mcpHandler() http.Handler {
	h := s.mcp.HTTPHandler(mcpserver.HTTPConfig{MaxBodyBytes: s.cfg.MaxBodyBytes, MaxSessions: s.cfg.MaxMCPSessions, Shutdown: s.shutdown})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
		defer cancel()
		stop := context.AfterFunc(r.Context(), func() {
			if s.stopCalls.Err() == nil {
				cancel() // the client left
				return
			}
			time.AfterFunc(drainTimeout, cancel)
		})
		defer stop()
		h.ServeHTTP(w, r.WithContext(ctx))
	})
}

// bodyDeadline gives the request's body Config.BodyTimeout to arrive: a client stalled mid-body
// otherwise holds its connection, and a file descriptor, for as long as it likes. The deadline is
// lifted when the body has been read, so that it never cuts a long call short.
func (s *Server) bodyDeadline(w http.ResponseWriter, r *http.Request) {
	if s.cfg.BodyTimeout <= 0 || r.Body == nil || r.Body == http.NoBody {
		return
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(s.cfg.BodyTimeout)) != nil {
		return // not a real connection (a test recorder)
	}
	r.Body = &deadlineBody{ReadCloser: r.Body, lift: func() { rc.SetReadDeadline(time.Time{}) }}
}

// deadlineBody lifts its connection's read deadline once the body has been read or closed.
type deadlineBody struct {
	io.ReadCloser
	lift   func()
	lifted bool // only the handler's goroutine reads or closes the body
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !b.lifted {
		b.lifted = true
		if err == io.EOF {
			b.lift()
		}
	}
	return n, err
}

func (b *deadlineBody) Close() error {
	if !b.lifted {
		b.lifted = true
		b.lift()
	}
	return b.ReadCloser.Close()
}

// isBodyTimeout reports whether reading the body failed at its deadline.
func isBodyTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// statusWriter records the status for metrics and logs.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush for MCP event streams.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

var crossOrigin = http.NewCrossOriginProtection()

func (s *Server) middleware(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inFlight.Add(1)
		defer s.inFlight.Add(-1)
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		s.bodyDeadline(sw, r)
		s.serve(sw, r, mux)
		route := r.Pattern
		if route == "" {
			route = "unmatched"
		}
		s.metrics.Request(route, sw.code)
		if s.log.Enabled(r.Context(), slog.LevelDebug) {
			s.log.LogAttrs(r.Context(), slog.LevelDebug, "request", slog.String("method", r.Method), slog.String("route", route),
				slog.Int("status", sw.code), slog.String("call_id", sw.Header().Get("X-Call-Id")), slog.Duration("duration", time.Since(start)))
		}
	})
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	if err := crossOrigin.Check(r); err != nil {
		writeError(w, http.StatusForbidden, "forbidden", "cross-origin requests are refused", "")
		return
	}
	if s.cfg.Token == "" && s.loopback && !loopbackHost(r.Host) {
		// A loopback server without a token trusts whoever can reach it; a browser page on a
		// rebinding DNS name must not count as such.
		writeError(w, http.StatusForbidden, "forbidden", "this server listens on loopback: the Host header must be a loopback name", "")
		return
	}
	if s.cfg.Token != "" && r.URL.Path != "/healthz" && !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="axoiso"`)
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "unauthorized request", slog.String("remote", r.RemoteAddr), slog.String("path", r.URL.Path))
		writeError(w, http.StatusUnauthorized, "unauthorized", "a valid bearer token is required (Authorization: Bearer …)", "")
		return
	}
	if _, pattern := mux.Handler(r); pattern == "" {
		s.notRouted(w, r, mux)
		return
	}
	mux.ServeHTTP(w, r)
}

// notRouted answers 404 or 405 (with Allow) as JSON errors instead of the mux's plain text.
func (s *Server) notRouted(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	h, _ := mux.Handler(r)
	rec := &headerRecorder{h: http.Header{}}
	h.ServeHTTP(rec, r)
	if allow := rec.h.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
	}
	if rec.code == http.StatusMethodNotAllowed {
		writeError(w, rec.code, "method_not_allowed", fmt.Sprintf("%s is not allowed on %s", r.Method, r.URL.Path), "")
		return
	}
	writeError(w, http.StatusNotFound, "not_found", fmt.Sprintf("no route %s %s (see /openapi.json)", r.Method, r.URL.Path), "")
}

type headerRecorder struct {
	h    http.Header
	code int
}

func (r *headerRecorder) Header() http.Header         { return r.h }
func (r *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *headerRecorder) WriteHeader(code int)        { r.code = code }

func loopbackHost(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = strings.Trim(host, "[]")
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// errorBody is the JSON error document.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	CallID  string `json:"call_id,omitempty"`
	// Tier is the tier the call ran in, when it got that far.
	Tier     string `json:"tier,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	Stderr   string `json:"stderr,omitempty"`
	Stdout   string `json:"stdout,omitempty"`
	// Retryable: the same call may succeed later unchanged (isolation.Outcome.Retryable).
	Retryable bool `json:"retryable,omitempty"`
}

func writeError(w http.ResponseWriter, code int, kind, msg, callID string) {
	writeErrorDetail(w, code, errorDetail{Kind: kind, Message: msg, CallID: callID})
}

func writeErrorDetail(w http.ResponseWriter, code int, d errorDetail) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(errorBody{d})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// Status maps a call error to its HTTP status: isolation's outcome table.
func Status(err error) int { return isolation.OutcomeOf(err).HTTPStatus }

// kind is the error kind in bodies: the same word as the metrics' outcome label.
func kind(err error) string { return isolation.KindName(err) }

// execute answers the tool's output (or, asked for as older clients do, the envelope).
func (s *Server) execute(w http.ResponseWriter, r *http.Request) { s.run(w, r, false) }

// call answers the envelope as application/json: one schema per response, for generated clients.
func (s *Server) call(w http.ResponseWriter, r *http.Request) { s.run(w, r, true) }

func (s *Server) run(w http.ResponseWriter, r *http.Request, asCall bool) {
	callID := uuid.NewString()
	w.Header().Set("X-Call-Id", callID)
	name := r.PathValue("name")
	if err := catalog.ValidateName(name); err != nil {
		s.metrics.ObserveCall(name, nil, err, 0)
		s.writeCallError(w, r, callID, err)
		return
	}
	q := r.URL.Query()
	opts, timeout, err := s.callOptions(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_input", err.Error(), callID)
		return
	}
	opts = append(opts, executor.WithCallID(callID))
	envelope, err := wantsEnvelope(q, r.Header.Get("Accept"))
	envType := EnvelopeMediaType
	if asCall {
		envelope, envType = true, "application/json"
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_input", err.Error(), callID)
		return
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, "request_too_large", fmt.Sprintf("the body is over the limit of %d bytes", s.cfg.MaxBodyBytes), callID)
			return
		}
		if isBodyTimeout(err) {
			writeError(w, http.StatusRequestTimeout, "request_timeout", fmt.Sprintf("the body did not arrive within %s", s.cfg.BodyTimeout), callID)
			return
		}
		writeError(w, http.StatusBadRequest, "invalid_input", "reading the body: "+err.Error(), callID)
		return
	}

	release, err := s.admit(r.Context(), name)
	if err != nil {
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "call refused", slog.String("call_id", callID), slog.String("tool", name), slog.String("error", err.Error()))
		s.writeCallError(w, r, callID, err)
		return
	}
	done := s.metrics.Start()
	// Backstop for tools whose own timeout exceeds the server's maximum (the executor's
	// MaxTimeout should cap them first); a second's slack lets the tier report the timeout itself.
	// A W3C traceparent makes the call's spans part of the caller's trace (when tracing is on).
	ctx := tracing.Extract(r.Context(), r.Header.Get("traceparent"), r.Header.Get("tracestate"))
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
	start := time.Now()
	res, err := s.exec.Execute(ctx, name, body, opts...)
	d := time.Since(start)
	cancel()
	done()
	release()
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && r.Context().Err() == nil {
		// The backstop fired, not the call's own timeout: say so, whatever the tier reported.
		te := &isolation.Error{Kind: isolation.ErrTimeout, Tool: name, CallID: callID,
			Message: fmt.Sprintf("stopped at the server's limit of %s", timeout)}
		var ie *isolation.Error
		if errors.As(err, &ie) {
			te.Tier, te.HasTier, te.Stderr, te.Stdout = ie.Tier, ie.HasTier, ie.Stderr, ie.Stdout
		}
		err = te
	}
	s.metrics.ObserveCall(name, res, err, d)

	if err != nil {
		s.writeCallError(w, r, callID, err)
		return
	}
	w.Header().Set("X-Axocoatl-Tier", res.Tier.String())
	if res.Degraded {
		w.Header().Set("X-Axocoatl-Degraded", "true")
	}
	// JSON is UTF-8 (RFC 8259), but json.Valid accepts any bytes inside strings: a tool's stray
	// bytes become U+FFFD rather than reach clients raw.
	if !utf8.Valid(res.Output) {
		clean := *res
		clean.Output = bytes.ToValidUTF8(res.Output, []byte("\uFFFD"))
		res = &clean
	}
	if envelope {
		b, err := json.Marshal(res)
		if err != nil {
			s.writeCallError(w, r, callID, err)
			return
		}
		w.Header().Set("Content-Type", envType)
		w.Write(append(b, '\n'))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(res.Output)
}

func (s *Server) writeCallError(w http.ResponseWriter, r *http.Request, callID string, err error) {
	o := isolation.OutcomeOf(err)
	code := o.HTTPStatus
	if errors.Is(err, errShuttingDown) {
		code = http.StatusServiceUnavailable // busy, but not for a while: this server is going away
	}
	d := errorDetail{Kind: o.Kind, Message: err.Error(), CallID: callID, Retryable: o.Retryable}
	if o.Kind == isolation.KindCanceled && s.shutdown.Err() != nil {
		d.Message = "the server shut down before the call ended (" + d.Message + ")"
	}
	if o.Retryable {
		w.Header().Set("Retry-After", "1")
	}
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
	if code == http.StatusInternalServerError {
		s.log.LogAttrs(r.Context(), slog.LevelError, "call failed inside the service", slog.String("call_id", callID), slog.String("error", err.Error()))
	}
	writeErrorDetail(w, code, d)
}

// callOptions parses tier=, strict=, timeout= and returns the effective server-side timeout cap.
func (s *Server) callOptions(q map[string][]string) ([]executor.Option, time.Duration, error) {
	var opts []executor.Option
	timeout := s.cfg.MaxTimeout
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	if v := get("tier"); v != "" {
		t, err := isolation.ParseTier(v)
		if err != nil {
			return nil, 0, fmt.Errorf("query parameter tier: %w", err)
		}
		opts = append(opts, executor.WithTier(t))
	}
	if v := get("strict"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, 0, fmt.Errorf("query parameter strict: %q is not a boolean", truncate(v, 20))
		}
		if b {
			opts = append(opts, executor.WithStrict())
		}
	}
	if v := get("timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, 0, fmt.Errorf("query parameter timeout: %q is not a positive duration such as 500ms or 2s", truncate(v, 20))
		}
		timeout = min(d, s.cfg.MaxTimeout)
		opts = append(opts, executor.WithTimeout(timeout))
	}
	return opts, timeout, nil
}

// wantsEnvelope reports whether the envelope was asked for (Accept or ?envelope=); however it
// was asked for, it is served as EnvelopeMediaType, as openapi.json says. A malformed boolean is
// an error, not a silent "no".
func wantsEnvelope(q map[string][]string, accept string) (bool, error) {
	if accept != "" && strings.Contains(accept, "vnd.axocoatl.envelope") {
		for _, part := range strings.Split(accept, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == EnvelopeMediaType {
				return true, nil
			}
		}
	}
	if v := q["envelope"]; len(v) > 0 {
		b, err := strconv.ParseBool(v[0])
		if err != nil {
			return false, fmt.Errorf("query parameter envelope: %q is not a boolean (true, false, 1, 0)", truncate(v[0], 20))
		}
		return b, nil
	}
	return false, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// toolView is a tool as the API shows it (no host paths).
type toolView struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Runtime     string `json:"runtime"`
	IdealTier   string `json:"ideal_tier"`
	TimeoutMS   int64  `json:"timeout_ms,omitempty"`
	MemoryMB    int    `json:"memory_mb,omitempty"`
	// Egress is the tool's effective network policy (patterns; absent: no network);
	// EgressNotGranted what its tool.json asks for that its calls do not get, and why.
	Egress           []string            `json:"egress,omitempty"`
	EgressNotGranted []egress.NotGranted `json:"egress_not_granted,omitempty"`
	InputSchema      json.RawMessage     `json:"input_schema,omitempty"`
	// Tier is the tier a call would run in now, under the server's policy.
	Tier      string `json:"tier,omitempty"`
	Degraded  bool   `json:"degraded,omitempty"`
	TierError string `json:"tier_error,omitempty"`
}

func (s *Server) view(t *catalog.Tool) toolView {
	pol, notGranted := s.exec.Egress(t)
	v := toolView{Name: t.Name, Description: t.Description, Runtime: t.Runtime.String(), IdealTier: t.Runtime.IdealTier().String(),
		TimeoutMS: t.TimeoutMS, MemoryMB: t.MemoryMB, EgressNotGranted: notGranted}
	if !pol.IsZero() {
		v.Egress = pol.Strings()
	}
	return v
}

func (s *Server) listTools(w http.ResponseWriter, r *http.Request) {
	tools, errs := s.exec.Tools()
	out := struct {
		Tools  []toolView `json:"tools"`
		Errors []string   `json:"errors,omitempty"`
	}{Tools: make([]toolView, 0, len(tools))}
	for _, t := range tools {
		out.Tools = append(out.Tools, s.view(t))
	}
	for _, e := range errs {
		out.Errors = append(out.Errors, e.Error())
	}
	writeJSON(w, out)
}

func (s *Server) getTool(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	t, err := s.exec.Tool(name)
	if err != nil {
		writeErrorDetail(w, Status(err), errorDetail{Kind: kind(err), Message: err.Error()})
		return
	}
	v := s.view(t)
	v.InputSchema = t.InputSchema
	if len(v.InputSchema) == 0 {
		v.InputSchema = json.RawMessage(`{"type":"object"}`)
	}
	if sel, err := s.exec.Select(r.Context(), t); err != nil {
		v.TierError = err.Error()
	} else {
		v.Tier, v.Degraded = sel.Tier.String(), sel.Degraded
	}
	writeJSON(w, v)
}

type poolView struct {
	Tier string `json:"tier"`
	sandbox.PoolStats
}

func (s *Server) tiers(w http.ResponseWriter, r *http.Request) {
	out := struct {
		Tiers []executor.TierStatus `json:"tiers"`
		Pools []poolView            `json:"pools"`
	}{Tiers: s.exec.Tiers(r.Context()), Pools: []poolView{}}
	for _, t := range isolation.Tiers() {
		if sb, ok := s.exec.Sandbox(t); ok {
			if p, ok := sb.(sandbox.Pooler); ok {
				for _, st := range p.PoolStats() {
					out.Pools = append(out.Pools, poolView{Tier: t.String(), PoolStats: st})
				}
			}
		}
	}
	writeJSON(w, out)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, map[string]string{"status": "ok", "version": s.cfg.Version})
}

func serveOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write(openAPI)
}
