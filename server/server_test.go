package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/server/internal/testtools"
)

// newTestServer returns a server over a fresh fixture, served by httptest on loopback.
func newTestServer(t *testing.T, cfg Config) (*Server, *testtools.Fixture, *httptest.Server) {
	t.Helper()
	f := testtools.New(t)
	cfg.Executor = f.Exec
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		close(f.Release)
		ts.Close()
		s.Close()
	})
	return s, f, ts
}

type errorDoc struct {
	Error struct {
		Kind     string `json:"kind"`
		Message  string `json:"message"`
		CallID   string `json:"call_id"`
		Tier     string `json:"tier"`
		ExitCode *int   `json:"exit_code"`
		Stderr   string `json:"stderr"`
	} `json:"error"`
}

func do(t *testing.T, method, url, body string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestExecuteStatuses(t *testing.T) {
	_, _, ts := newTestServer(t, Config{MaxBodyBytes: 4096})
	cases := []struct {
		name, method, path, body string
		status                   int
		kind                     string // "" for success
		output                   string // exact output on success
		check                    func(t *testing.T, e errorDoc)
	}{
		{name: "echo", path: "/v1/tools/echo/execute", body: `{"a":[1,2,{"b":null}]}`, status: 200, output: `{"a":[1,2,{"b":null}]}`},
		{name: "schema ok", path: "/v1/tools/typed/execute", body: `{"n":21}`, status: 200, output: `{"double":42}`},
		{name: "scalar input", path: "/v1/tools/echo/execute", body: `"just a string"`, status: 200, output: `"just a string"`},
		{name: "schema mismatch", path: "/v1/tools/typed/execute", body: `{"n":"x"}`, status: 400, kind: "invalid_input"},
		{name: "not json", path: "/v1/tools/echo/execute", body: `{"a":`, status: 400, kind: "invalid_input"},
		{name: "empty body", path: "/v1/tools/echo/execute", body: ``, status: 400, kind: "invalid_input"},
		{name: "bad name", path: "/v1/tools/Bad..Name/execute", body: `{}`, status: 400, kind: "invalid_tool_name"},
		{name: "dotdot name", path: "/v1/tools/a..b/execute", body: `{}`, status: 400, kind: "invalid_tool_name"},
		{name: "unknown tool", path: "/v1/tools/no-such-tool/execute", body: `{}`, status: 404, kind: "tool_not_found", check: func(t *testing.T, e errorDoc) {
			if strings.Contains(e.Error.Message, "/") { // the host's tools root is nobody's business
				t.Errorf("a 404 names a host path: %q", e.Error.Message)
			}
		}},
		{name: "tool fails", path: "/v1/tools/fail/execute", body: `{}`, status: 502, kind: "tool_failed", check: func(t *testing.T, e errorDoc) {
			if e.Error.ExitCode == nil || *e.Error.ExitCode != 1 || !strings.Contains(e.Error.Stderr, "boom on purpose") || e.Error.Tier != "None" {
				t.Errorf("want exit_code 1, stderr with the message, tier None; got %+v", e.Error)
			}
		}},
		{name: "tool panics", path: "/v1/tools/panic/execute", body: `{}`, status: 502, kind: "tool_failed"},
		{name: "bad output", path: "/v1/tools/badjson/execute", body: `{}`, status: 502, kind: "output_invalid"},
		{name: "empty output", path: "/v1/tools/empty/execute", body: `{}`, status: 502, kind: "output_invalid"},
		{name: "output too large", path: "/v1/tools/huge/execute", body: `{}`, status: 502, kind: "output_too_large"},
		{name: "query timeout", path: "/v1/tools/slow/execute?timeout=50ms", body: `{"ms":10000}`, status: 504, kind: "timeout"},
		{name: "tool timeout", path: "/v1/tools/sleepy/execute", body: `{}`, status: 504, kind: "timeout"},
		{name: "no tier", path: "/v1/tools/needs-wasm/execute", body: `{}`, status: 422, kind: "tier_unavailable"},
		{name: "forced tier absent", path: "/v1/tools/echo/execute?tier=Oci", body: `{}`, status: 422, kind: "tier_unavailable"},
		{name: "forced tier ok", path: "/v1/tools/echo/execute?tier=None&strict=true", body: `[1]`, status: 200, output: `[1]`},
		{name: "bad timeout", path: "/v1/tools/echo/execute?timeout=soon", body: `{}`, status: 400, kind: "invalid_input"},
		{name: "negative timeout", path: "/v1/tools/echo/execute?timeout=-1s", body: `{}`, status: 400, kind: "invalid_input"},
		{name: "bad tier", path: "/v1/tools/echo/execute?tier=Docker", body: `{}`, status: 400, kind: "invalid_input"},
		{name: "bad strict", path: "/v1/tools/echo/execute?strict=maybe", body: `{}`, status: 400, kind: "invalid_input"},
		{name: "bad envelope", path: "/v1/tools/echo/execute?envelope=yes", body: `{}`, status: 400, kind: "invalid_input"},
		{name: "body too large", path: "/v1/tools/echo/execute", body: `"` + strings.Repeat("x", 5000) + `"`, status: 413, kind: "request_too_large"},
		{name: "wrong method", method: "GET", path: "/v1/tools/echo/execute", status: 405, kind: "method_not_allowed"},
		{name: "no route", method: "GET", path: "/v2/nothing", status: 404, kind: "not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = "POST"
			}
			resp, body := do(t, method, ts.URL+c.path, c.body, map[string]string{"Content-Type": "application/json"})
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, c.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			if c.kind == "" {
				if !bytes.Equal(body, []byte(c.output)) {
					t.Errorf("output %s, want %s", body, c.output)
				}
				if resp.Header.Get("X-Call-Id") == "" || resp.Header.Get("X-Axocoatl-Tier") != "None" {
					t.Errorf("headers %v", resp.Header)
				}
				return
			}
			var e errorDoc
			if err := json.Unmarshal(body, &e); err != nil {
				t.Fatalf("error body %s: %v", body, err)
			}
			if e.Error.Kind != c.kind || e.Error.Message == "" {
				t.Errorf("kind %q message %q, want kind %q", e.Error.Kind, e.Error.Message, c.kind)
			}
			if strings.HasPrefix(c.path, "/v1/tools/") && strings.HasSuffix(strings.Split(c.path, "?")[0], "/execute") && method == "POST" {
				if id := resp.Header.Get("X-Call-Id"); id == "" || e.Error.CallID != id {
					t.Errorf("call id header %q, body %q", id, e.Error.CallID)
				}
			}
			if c.status == 405 && resp.Header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			if c.check != nil {
				c.check(t, e)
			}
		})
	}
}

func TestEnvelope(t *testing.T) {
	_, _, ts := newTestServer(t, Config{})
	cases := []struct {
		name, query, accept, wantType string
	}{
		{"query", "?envelope=1", "", EnvelopeMediaType},
		{"query true", "?envelope=true", "", EnvelopeMediaType},
		{"call", "/../call", "", "application/json"},
		{"accept", "", "application/json;q=0.5, " + EnvelopeMediaType, EnvelopeMediaType},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{}
			if c.accept != "" {
				hdr["Accept"] = c.accept
			}
			path := "/v1/tools/echo/execute" + c.query
			if c.query == "/../call" {
				path = "/v1/tools/echo/call"
			}
			resp, body := do(t, "POST", ts.URL+path, `{"x":1}`, hdr)
			if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != c.wantType {
				t.Fatalf("status %d type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
			}
			var env struct {
				Output     json.RawMessage `json:"output"`
				Tier       string          `json:"tier"`
				Degraded   *bool           `json:"degraded"`
				DurationMS *float64        `json:"duration_ms"`
				Stderr     *string         `json:"stderr"`
				Stdout     *string         `json:"stdout"`
				CallID     string          `json:"call_id"`
				Limits     *struct {
					TimeoutMS int64 `json:"timeout_ms"`
				} `json:"limits"`
			}
			if err := json.Unmarshal(body, &env); err != nil {
				t.Fatal(err)
			}
			if env.Limits == nil || env.Limits.TimeoutMS <= 0 {
				t.Errorf("envelope %s lacks the call's limits", body)
			}
			if string(env.Output) != `{"x":1}` || env.Tier != "None" || env.Degraded == nil || *env.Degraded ||
				env.DurationMS == nil || *env.DurationMS < 0 || env.Stderr == nil || env.Stdout == nil || env.CallID != resp.Header.Get("X-Call-Id") || env.CallID == "" {
				t.Errorf("envelope %s (X-Call-Id %s)", body, resp.Header.Get("X-Call-Id"))
			}
		})
	}
}

func TestConcurrencyLimits(t *testing.T) {
	cases := []struct {
		name  string
		cfg   Config
		other string // a call that must still succeed while block runs
		// otherStatus is the status of a second call of "other" while block holds its slot.
		otherStatus int
	}{
		{"global", Config{MaxConcurrent: 1}, "echo", 429},
		{"per tool", Config{MaxConcurrent: 8, ToolConcurrency: map[string]int{"block": 1}}, "echo", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, f, ts := newTestServer(t, c.cfg)
			done := make(chan int, 1)
			go func() {
				resp, err := http.Post(ts.URL+"/v1/tools/block/execute", "application/json", strings.NewReader(`{}`))
				if err != nil {
					done <- -1
					return
				}
				resp.Body.Close()
				done <- resp.StatusCode
			}()
			<-f.Started
			resp, body := do(t, "POST", ts.URL+"/v1/tools/block/execute", `{}`, nil)
			if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !bytes.Contains(body, []byte(`"kind":"busy"`)) || !bytes.Contains(body, []byte(`"retryable":true`)) {
				t.Errorf("second block: %d %s", resp.StatusCode, body)
			}
			resp, body = do(t, "POST", ts.URL+"/v1/tools/"+c.other+"/execute", `{}`, nil)
			if resp.StatusCode != c.otherStatus {
				t.Errorf("%s while block runs: %d %s", c.other, resp.StatusCode, body)
			}
			f.Release <- struct{}{} // hand the running block call its release
			if code := <-done; code != 200 {
				t.Errorf("first block ended with %d", code)
			}
			resp, body = do(t, "POST", ts.URL+"/v1/tools/echo/execute", `{}`, nil)
			if resp.StatusCode != 200 {
				t.Errorf("after release: %d %s", resp.StatusCode, body)
			}
			_, metrics := do(t, "GET", ts.URL+"/metrics", "", nil)
			if !bytes.Contains(metrics, []byte(`axoiso_calls_rejected_total{reason=`)) {
				t.Errorf("no rejection metric:\n%s", grep(metrics, "rejected"))
			}
			_ = s
		})
	}
}

func TestQueueWait(t *testing.T) {
	_, f, ts := newTestServer(t, Config{MaxConcurrent: 1, QueueWait: 10 * time.Second})
	first := make(chan int, 1)
	go func() {
		resp, err := http.Post(ts.URL+"/v1/tools/block/execute", "application/json", strings.NewReader(`{}`))
		if err == nil {
			resp.Body.Close()
			first <- resp.StatusCode
		}
	}()
	<-f.Started
	second := make(chan int, 1)
	go func() {
		resp, err := http.Post(ts.URL+"/v1/tools/echo/execute", "application/json", strings.NewReader(`{}`))
		if err == nil {
			resp.Body.Close()
			second <- resp.StatusCode
		}
	}()
	select {
	case code := <-second:
		t.Fatalf("queued call finished (%d) while the slot was held", code)
	case <-time.After(100 * time.Millisecond):
	}
	f.Release <- struct{}{}
	if a, b := <-first, <-second; a != 200 || b != 200 {
		t.Errorf("statuses %d, %d; want both 200 (the second waited in the queue)", a, b)
	}
}

func TestAuth(t *testing.T) {
	const token = "s3cret-token-0123456789"
	_, _, ts := newTestServer(t, Config{Token: token})
	cases := []struct {
		name, method, path, auth string
		status                   int
	}{
		{"no token", "POST", "/v1/tools/echo/execute", "", 401},
		{"wrong token", "POST", "/v1/tools/echo/execute", "Bearer wrong-token-0123456789", 401},
		{"prefix of token", "POST", "/v1/tools/echo/execute", "Bearer " + token[:len(token)-1], 401},
		{"basic scheme", "POST", "/v1/tools/echo/execute", "Basic " + token, 401},
		{"right token", "POST", "/v1/tools/echo/execute", "Bearer " + token, 200},
		{"lowercase scheme", "GET", "/v1/tools", "bearer " + token, 200},
		{"metrics need it", "GET", "/metrics", "", 401},
		{"mcp needs it", "POST", "/mcp", "", 401},
		{"healthz does not", "GET", "/healthz", "", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hdr := map[string]string{}
			if c.auth != "" {
				hdr["Authorization"] = c.auth
			}
			resp, body := do(t, c.method, ts.URL+c.path, `{}`, hdr)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if c.status == 401 && (resp.Header.Get("WWW-Authenticate") == "" || !bytes.Contains(body, []byte(`"unauthorized"`))) {
				t.Errorf("401 without challenge or kind: %v %s", resp.Header, body)
			}
		})
	}
}

func TestNewRefusesUnsafeConfigs(t *testing.T) {
	f := testtools.New(t)
	cases := []struct {
		name string
		cfg  Config
		want error
	}{
		{"all interfaces without token", Config{Addr: ":8080"}, ErrTokenRequired},
		{"public address without token", Config{Addr: "0.0.0.0:8080"}, ErrTokenRequired},
		{"ipv6 any without token", Config{Addr: "[::]:8080"}, ErrTokenRequired},
		{"short token", Config{Addr: "0.0.0.0:8080", Token: "short"}, nil},
		{"token with space", Config{Addr: "0.0.0.0:8080", Token: "has a space in it ok"}, nil},
		{"tls half set", Config{TLSCertFile: "c.pem"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.Executor = f.Exec
			_, err := New(c.cfg)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) {
				t.Fatalf("New = %v, want an error (%v)", err, c.want)
			}
		})
	}
	for _, ok := range []Config{{Addr: "127.0.0.1:0"}, {Addr: "localhost:9"}, {Addr: "[::1]:9"}, {Addr: "0.0.0.0:9", Token: "0123456789abcdef"}} {
		ok.Executor = f.Exec
		if _, err := New(ok); err != nil {
			t.Errorf("New(%s) = %v", ok.Addr, err)
		}
	}
	// Serve re-checks the real listener: a non-loopback listener without a token is refused.
	s, err := New(Config{Executor: testtools.New(t).Exec})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Skip("cannot listen on 0.0.0.0: ", err)
	}
	if err := s.Serve(context.Background(), ln); !errors.Is(err, ErrTokenRequired) {
		t.Errorf("Serve on 0.0.0.0 without a token = %v", err)
	}
}

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("file-token-0123456789\n"), 0o600)
	open := filepath.Join(dir, "open")
	os.WriteFile(open, []byte("file-token-0123456789\n"), 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	cases := []struct {
		name, value, path, env, want string
		wantErr                      bool
	}{
		{name: "flag wins", value: "flag-token-0123456789", path: good, env: "env-token-0123456789", want: "flag-token-0123456789"},
		{name: "file trimmed", path: good, env: "env-token-0123456789", want: "file-token-0123456789"},
		{name: "env last", env: "env-token-0123456789", want: "env-token-0123456789"},
		{name: "none", want: ""},
		{name: "world-readable file", path: open, wantErr: true},
		{name: "empty file", path: empty, wantErr: true},
		{name: "missing file", path: filepath.Join(dir, "nope"), wantErr: true},
		{name: "short flag", value: "short", wantErr: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(TokenEnv, c.env)
			got, err := LoadToken(c.value, c.path)
			if (err != nil) != c.wantErr || got != c.want {
				t.Errorf("LoadToken = %q, %v; want %q, error %v", got, err, c.want, c.wantErr)
			}
		})
	}
}

func TestBrowserProtections(t *testing.T) {
	_, _, ts := newTestServer(t, Config{})
	cases := []struct {
		name   string
		hdr    map[string]string
		host   string
		status int
	}{
		{"rebinding host", nil, "evil.example:8080", 403},
		{"cross-site fetch", map[string]string{"Sec-Fetch-Site": "cross-site"}, "", 403},
		{"foreign origin", map[string]string{"Origin": "https://evil.example"}, "", 403},
		{"same host", nil, "localhost", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", ts.URL+"/v1/tools/echo/execute", strings.NewReader(`{}`))
			for k, v := range c.hdr {
				req.Header.Set(k, v)
			}
			if c.host != "" {
				req.Host = c.host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Errorf("status %d, want %d", resp.StatusCode, c.status)
			}
		})
	}
}

func TestCatalogRoutes(t *testing.T) {
	_, f, ts := newTestServer(t, Config{})
	resp, body := do(t, "GET", ts.URL+"/v1/tools", "", nil)
	var list struct {
		Tools []map[string]any `json:"tools"`
	}
	if err := json.Unmarshal(body, &list); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %s %v", resp.StatusCode, body, err)
	}
	names := map[string]map[string]any{}
	for _, tl := range list.Tools {
		names[tl["name"].(string)] = tl
	}
	for _, want := range []string{"echo", "fail", "typed", "list", "needs-wasm"} {
		if names[want] == nil {
			t.Errorf("tool %s missing from %s", want, body)
		}
	}
	if names["needs-wasm"]["ideal_tier"] != "Wasmtime" || names["typed"]["runtime"] != "NativeTrusted" {
		t.Errorf("views: %v %v", names["needs-wasm"], names["typed"])
	}
	if bytes.Contains(body, []byte(f.Root)) {
		t.Error("the tool list exposes host paths")
	}

	cases := []struct {
		path     string
		status   int
		contains []string
	}{
		{"/v1/tools/typed", 200, []string{`"input_schema"`, `"required"`, `"tier": "None"`}},
		{"/v1/tools/echo", 200, []string{`"input_schema": {`, `"type": "object"`}},
		{"/v1/tools/needs-wasm", 200, []string{`"tier_error"`, `Wasmtime unavailable`}},
		{"/v1/tools/ghost", 404, []string{`"tool_not_found"`}},
		{"/v1/tools/UPPER", 400, []string{`"invalid_tool_name"`}},
		{"/v1/tiers", 200, []string{`"tier": "None"`, `"available": true`, `"tier": "Firecracker"`, `"reason"`, `"pools": []`}},
		{"/healthz", 200, []string{`"ok"`}},
	}
	for _, c := range cases {
		t.Run(c.path, func(t *testing.T) {
			resp, body := do(t, "GET", ts.URL+c.path, "", nil)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			for _, s := range c.contains {
				if !bytes.Contains(body, []byte(s)) {
					t.Errorf("%s lacks %s", body, s)
				}
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	_, _, ts := newTestServer(t, Config{})
	for _, c := range []struct{ path, body string }{
		{"/v1/tools/echo/execute", `{}`},
		{"/v1/tools/echo/execute", `{}`},
		{"/v1/tools/fail/execute", `{}`},
		{"/v1/tools/ghost-1/execute", `{}`},
		{"/v1/tools/ghost-2/execute", `{}`},
		{"/v1/tools/sleepy/execute", `{}`},
	} {
		do(t, "POST", ts.URL+c.path, c.body, nil)
	}
	resp, body := do(t, "GET", ts.URL+"/metrics", "", nil)
	if resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	for _, want := range []string{
		`axoiso_calls_total{outcome="ok",tier="None",tool="echo"} 2`,
		`axoiso_calls_total{outcome="tool_failed",tier="None",tool="fail"} 1`,
		`axoiso_calls_total{outcome="tool_not_found",tier="",tool="_unknown"} 2`,
		`axoiso_calls_total{outcome="timeout",tier="None",tool="sleepy"} 1`,
		`axoiso_call_duration_seconds_bucket{outcome="ok",tier="None",tool="echo",le="+Inf"} 2`,
		`axoiso_calls_in_flight 0`,
		`axoiso_tier_available{backend="in-process",tier="None"} 1`,
		`axoiso_tier_available{backend="",tier="Oci"} 0`,
		`axoiso_http_requests_total{code="200",route="POST /v1/tools/{name}/execute"} 2`,
		`go_goroutines`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %s\n%s", want, grep(body, "axoiso_"))
		}
	}
	if bytes.Contains(body, []byte("ghost-1")) {
		t.Error("an unknown tool name became a label")
	}
}

func grep(b []byte, s string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	_, _, ts := newTestServer(t, Config{})
	resp, body := do(t, "GET", ts.URL+"/openapi.json", "", nil)
	if resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("openapi.json is not JSON: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Errorf("openapi version %q", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	// /mcp is the MCP transport's, mounted beside the API routes.
	served := map[string]bool{"POST /mcp": true, "GET /mcp": true, "DELETE /mcp": true}
	for _, r := range apiRoutes {
		served[r.method+" "+r.path] = true
		if !documented[r.method+" "+r.path] {
			t.Errorf("route %s %s is not in openapi.json", r.method, r.path)
		}
	}
	for k := range documented {
		if !served[k] {
			t.Errorf("openapi.json documents %s, which is not served", k)
		}
	}
	// Every status an execute call can return is documented.
	var exec struct {
		Responses map[string]json.RawMessage `json:"responses"`
	}
	json.Unmarshal(doc.Paths["/v1/tools/{name}/execute"]["post"], &exec)
	for _, o := range isolation.Outcomes() {
		if _, ok := exec.Responses[strconv.Itoa(o.HTTPStatus)]; !ok {
			t.Errorf("status %d (%s) is not documented for execute", o.HTTPStatus, o.Kind)
		}
	}
	for _, code := range []int{200, 401, 408, 413, 429} {
		if _, ok := exec.Responses[strconv.Itoa(code)]; !ok {
			t.Errorf("status %d is not documented for execute", code)
		}
	}
	// Every error kind of the outcome table is in the Error schema's enum.
	var schemas struct {
		Components struct {
			Schemas struct {
				Error struct {
					Properties struct {
						Error struct {
							Properties struct {
								Kind struct {
									Enum []string `json:"enum"`
								} `json:"kind"`
							} `json:"properties"`
						} `json:"error"`
					} `json:"properties"`
				} `json:"Error"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPI, &schemas); err != nil {
		t.Fatal(err)
	}
	enum := schemas.Components.Schemas.Error.Properties.Error.Properties.Kind.Enum
	for _, o := range isolation.Outcomes() {
		if o.Kind != isolation.KindOK && !slices.Contains(enum, o.Kind) {
			t.Errorf("kind %q is not in openapi.json's Error enum %v", o.Kind, enum)
		}
	}
}

func TestMCPOverStreamableHTTP(t *testing.T) {
	_, _, ts := newTestServer(t, Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, tl := range tools.Tools {
		found = found || tl.Name == "typed"
	}
	if !found {
		t.Fatalf("typed missing from %d tools", len(tools.Tools))
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "typed", Arguments: map[string]any{"n": 4}})
	if err != nil || res.IsError {
		t.Fatalf("call: %v %+v", err, res)
	}
	if got, _ := json.Marshal(res.StructuredContent); string(got) != `{"double":8}` {
		t.Errorf("structured %s", got)
	}
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "sleepy", Arguments: map[string]any{}})
	if err != nil || !res.IsError || !strings.Contains(res.Content[0].(*mcp.TextContent).Text, "timeout") {
		t.Fatalf("sleepy: %v %+v", err, res)
	}
	_, body := do(t, "GET", ts.URL+"/metrics", "", nil)
	if !bytes.Contains(body, []byte(`axoiso_calls_total{outcome="ok",tier="None",tool="typed"} 1`)) {
		t.Errorf("MCP calls are not in the metrics:\n%s", grep(body, "calls_total"))
	}
}

func TestGracefulShutdown(t *testing.T) {
	f := testtools.New(t)
	s, err := New(Config{Executor: f.Exec, GracePeriod: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()

	type result struct {
		code int
		body string
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		resp, err := http.Post("http://"+addr+"/v1/tools/block/execute", "application/json", strings.NewReader(`{}`))
		if err != nil {
			slow <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- result{code: resp.StatusCode, body: string(b)}
	}()
	<-f.Started // the call is in flight
	cancel()

	// New connections are refused once shutdown has begun, while the call is still running.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections 5 s after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-served:
		t.Fatal("Serve returned while a call was in flight")
	default:
	}
	if n := f.Native.Closed.Load(); n != 0 {
		t.Fatalf("executor closed with a call in flight (%d)", n)
	}
	close(f.Release)
	r := <-slow
	if r.err != nil || r.code != 200 || r.body != `{"released":true}` {
		t.Fatalf("in-flight call: %+v", r)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if n := f.Native.Closed.Load(); n != 1 {
		t.Errorf("executor Close ran %d times, want 1", n)
	}
	if f.SawCancel.Load() != 0 {
		t.Error("the in-flight call was cancelled during a graceful shutdown")
	}
}

func TestShutdownCancelsAfterGrace(t *testing.T) {
	f := testtools.New(t)
	s, err := New(Config{Executor: f.Exec, GracePeriod: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	go func() {
		resp, err := http.Post("http://"+ln.Addr().String()+"/v1/tools/block/execute", "application/json", strings.NewReader(`{}`))
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-f.Started
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the grace period")
	}
	if f.SawCancel.Load() != 1 {
		t.Error("the call still running after the grace period was not cancelled")
	}
	if f.Native.Closed.Load() != 1 {
		t.Error("executor not closed")
	}
}

// An open MCP session (with its event stream) must not hold a graceful shutdown for the whole
// grace period.
func TestShutdownWithMCPSession(t *testing.T) {
	f := testtools.New(t)
	s, err := New(Config{Executor: f.Exec, GracePeriod: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(cctx,
		&mcp.StreamableClientTransport{Endpoint: "http://" + ln.Addr().String() + "/mcp", MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if _, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "echo", Arguments: map[string]any{}}); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("an idle MCP session held the shutdown")
	}
	if f.Native.Closed.Load() != 1 {
		t.Error("executor not closed")
	}
}

func TestServerMaxTimeout(t *testing.T) {
	_, _, ts := newTestServer(t, Config{MaxTimeout: 200 * time.Millisecond})
	cases := []struct {
		name, query, message string
	}{
		// ?timeout is capped by the server's maximum: the tier stops the call at 200ms.
		{"query capped", "?timeout=1h", "stopped after 200ms"},
		// The tool's own 10 s timeout is over the maximum; the executor in this fixture does not
		// cap it, so the server's backstop stops it and says so.
		{"backstop", "", "server's limit of 200ms"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := do(t, "POST", ts.URL+"/v1/tools/slow/execute"+c.query, `{"ms":20000}`, nil)
			if resp.StatusCode != 504 || !bytes.Contains(body, []byte(c.message)) || !bytes.Contains(body, []byte(`"timeout"`)) {
				t.Errorf("%d %s; want 504 with %q", resp.StatusCode, body, c.message)
			}
		})
	}
	_, metrics := do(t, "GET", ts.URL+"/metrics", "", nil)
	if !bytes.Contains(metrics, []byte(`axoiso_calls_total{outcome="timeout",tier="None",tool="slow"} 2`)) {
		t.Errorf("timeouts not counted as such:\n%s", grep(metrics, "calls_total"))
	}
}
