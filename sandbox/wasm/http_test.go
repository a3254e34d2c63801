package wasm

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/egresstest/testnet"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox"
)

var (
	httpGuestOnce sync.Once
	httpGuestPath string
	httpGuestErr  error
)

// httpGuest builds testdata/httpguest; the hash of package wasmhttp is in its ldflags, so a
// change of the helper rebuilds it.
func httpGuest(tb testing.TB) string {
	tb.Helper()
	httpGuestOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		h, err := wasmbuild.SourceHash("guest/wasmhttp", wasmbuild.Config{})
		if err != nil {
			httpGuestErr = err
			return
		}
		httpGuestPath, httpGuestErr = wasmbuild.Cached(ctx, "testdata/httpguest", buildCache, wasmbuild.Config{Ldflags: "-X main.helper=" + h})
	})
	if httpGuestErr != nil {
		tb.Fatalf("building the http guest: %v", httpGuestErr)
	}
	return httpGuestPath
}

type httpResult struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
	URL    string `json:"url"`
	Error  string `json:"error"`
	Kind   string `json:"kind"`
}

// httpWorld: "public" HTTP and HTTPS servers on 127.0.0.1 (reopened by allow_private),
// canaries on 127.0.0.6 with the same ports (denied), and a fake DNS naming them.
type httpWorld struct {
	gate            *egress.Gate
	dns             *testnet.DNS
	port, tlsPort   int
	canaryHits      atomic.Int64
	slow            chan struct{}
	policy          egress.Policy
	cfg             Config
	deniedLog       *strings.Builder
	logMu           sync.Mutex
	allowedRequests atomic.Int64
}

func listenAt(t testing.TB, addr string) net.Listener {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func newHTTPWorld(t testing.TB) *httpWorld {
	t.Helper()
	w := &httpWorld{slow: make(chan struct{}), deniedLog: &strings.Builder{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(rw http.ResponseWriter, r *http.Request) {
		w.allowedRequests.Add(1)
		fmt.Fprintf(rw, "hello %s %s", r.Host, r.Header.Get("X-Test"))
	})
	mux.HandleFunc("/echo", func(rw http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(rw, "%s %s", r.Method, b)
	})
	mux.HandleFunc("/big", func(rw http.ResponseWriter, r *http.Request) {
		rw.Write([]byte(strings.Repeat("x", 5<<20)))
	})
	mux.HandleFunc("/slow", func(rw http.ResponseWriter, r *http.Request) {
		select {
		case <-w.slow:
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/redirect", func(rw http.ResponseWriter, r *http.Request) {
		http.Redirect(rw, r, r.URL.Query().Get("to"), http.StatusFound)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = listenAt(t, "127.0.0.1:0")
	srv.Start()
	t.Cleanup(srv.Close)
	cert, pool := testnet.Cert(t, "api.allowed.test")
	tsrv := httptest.NewUnstartedServer(mux)
	tsrv.Listener = listenAt(t, "127.0.0.1:0")
	tsrv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	tsrv.StartTLS()
	t.Cleanup(tsrv.Close)
	t.Cleanup(func() { close(w.slow) })
	w.port = srv.Listener.Addr().(*net.TCPAddr).Port
	w.tlsPort = tsrv.Listener.Addr().(*net.TCPAddr).Port
	for _, p := range []int{w.port, w.tlsPort} {
		c := httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			w.canaryHits.Add(1)
			io.WriteString(rw, "CANARY")
		}))
		c.Listener = listenAt(t, fmt.Sprintf("127.0.0.6:%d", p))
		c.Start()
		t.Cleanup(c.Close)
	}
	w.dns = testnet.StartDNS(t,
		"api.allowed.test. 300 IN A 127.0.0.1",
		"other.allowed.test. 300 IN A 127.0.0.1",
		"canary.allowed.test. 300 IN A 127.0.0.6",
		"meta.allowed.test. 300 IN A 169.254.169.254",
		"evil.test. 300 IN A 127.0.0.1",
	)
	logger := slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		w.logMu.Lock()
		defer w.logMu.Unlock()
		return w.deniedLog.Write(b)
	}), nil))
	g, err := egress.NewGate(egress.GateConfig{Resolver: w.dns.Addr, Logger: logger,
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	w.gate = g
	pats, err := egress.ParsePatterns([]string{
		fmt.Sprintf("api.allowed.test:%d", w.port), fmt.Sprintf("api.allowed.test:%d", w.tlsPort),
		fmt.Sprintf("*.allowed.test:%d", w.port),
	})
	if err != nil {
		t.Fatal(err)
	}
	w.policy = egress.NewPolicy(pats...)
	// The compiled guest is kept across tests and runs, like the guest's build.
	w.cfg = Config{CacheDir: filepath.Join(buildCache, "wazero-http"), Gate: g, HTTP: HTTPConfig{RootCAs: pool, Timeout: 2 * time.Second, MaxRequests: 12}}
	return w
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (w *httpWorld) run(t testing.TB, s *Sandbox, p egress.Policy, input map[string]any) []httpResult {
	t.Helper()
	c := call(httpGuest(t), input, sandbox.Limits{Timeout: 20 * time.Second, Egress: p})
	c.ID = "wasm-call-1"
	out, err := s.Run(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	if out.ExitCode != 0 {
		t.Fatalf("exit %d: %s", out.ExitCode, out.Stderr)
	}
	var res struct{ Results []httpResult }
	if err := json.Unmarshal(out.Output, &res); err != nil {
		t.Fatalf("output %s: %v", out.Output, err)
	}
	return res.Results
}

func TestHTTPRequest(t *testing.T) {
	w := newHTTPWorld(t)
	s := newSandbox(t, w.cfg)
	api := fmt.Sprintf("http://api.allowed.test:%d", w.port)
	tests := []struct {
		name string
		req  map[string]any
		want httpResult // Status/Body for success, Kind for failures; Error: a substring
	}{
		{"allowed name", map[string]any{"url": api + "/hello", "headers": map[string][]string{"X-Test": {"t1"}}},
			httpResult{Status: 200, Body: fmt.Sprintf("hello api.allowed.test:%d t1", w.port)}},
		{"allowed name over https (TLS verified by the host)", map[string]any{"url": fmt.Sprintf("https://api.allowed.test:%d/hello", w.tlsPort)},
			httpResult{Status: 200, Body: fmt.Sprintf("hello api.allowed.test:%d ", w.tlsPort)}},
		{"a Host header is not the guest's to set (it comes from the URL, as the SNI does)", map[string]any{"url": api + "/hello", "headers": map[string][]string{"Host": {"evil.test"}}},
			httpResult{Status: 200, Body: fmt.Sprintf("hello api.allowed.test:%d ", w.port)}},
		{"POST with a body", map[string]any{"method": "POST", "url": api + "/echo", "body": []byte("payload")},
			httpResult{Status: 200, Body: "POST payload"}},
		{"wildcard", map[string]any{"url": fmt.Sprintf("http://other.allowed.test:%d/hello", w.port)},
			httpResult{Status: 200, Body: fmt.Sprintf("hello other.allowed.test:%d ", w.port)}},
		{"redirect to an allowed host is followed", map[string]any{"url": api + "/redirect?to=" + fmt.Sprintf("http://other.allowed.test:%d/hello", w.port)},
			httpResult{Status: 200, Body: fmt.Sprintf("hello other.allowed.test:%d ", w.port)}},
		{"name not allowed", map[string]any{"url": fmt.Sprintf("http://evil.test:%d/hello", w.port)}, httpResult{Kind: "denied", Error: "no pattern allows"}},
		{"suffix trick", map[string]any{"url": fmt.Sprintf("http://evilallowed.test:%d/hello", w.port)}, httpResult{Kind: "denied"}},
		{"suffix trick as a subdomain", map[string]any{"url": fmt.Sprintf("http://api.allowed.test.evil.test:%d/hello", w.port)}, httpResult{Kind: "denied"}},
		{"IPv6 literal", map[string]any{"url": fmt.Sprintf("http://[::1]:%d/hello", w.port)}, httpResult{Kind: "denied"}},
		{"port not allowed", map[string]any{"url": fmt.Sprintf("http://api.allowed.test:%d/hello", w.port+1)}, httpResult{Kind: "denied"}},
		{"IP literal", map[string]any{"url": fmt.Sprintf("http://127.0.0.1:%d/hello", w.port)}, httpResult{Kind: "denied", Error: "CIDR"}},
		{"canary IP literal", map[string]any{"url": fmt.Sprintf("http://127.0.0.6:%d/hello", w.port)}, httpResult{Kind: "denied"}},
		{"allowed name resolving to a denied address", map[string]any{"url": fmt.Sprintf("http://canary.allowed.test:%d/hello", w.port)}, httpResult{Kind: "denied", Error: "deny set"}},
		{"allowed name resolving to metadata", map[string]any{"url": fmt.Sprintf("http://meta.allowed.test:%d/latest/meta-data", w.port)}, httpResult{Kind: "denied", Error: "deny set"}},
		{"redirect to a denied name", map[string]any{"url": api + "/redirect?to=" + fmt.Sprintf("http://evil.test:%d/hello", w.port)}, httpResult{Kind: "denied"}},
		{"redirect to a denied address", map[string]any{"url": api + "/redirect?to=" + fmt.Sprintf("http://127.0.0.6:%d/hello", w.port)}, httpResult{Kind: "denied"}},
		{"redirect to a name resolving to a denied address", map[string]any{"url": api + "/redirect?to=" + fmt.Sprintf("http://canary.allowed.test:%d/", w.port)}, httpResult{Kind: "denied"}},
		{"redirect to another scheme", map[string]any{"url": api + "/redirect?to=file:///etc/passwd"}, httpResult{Kind: "failed", Error: "only http and https"}},
		{"not http", map[string]any{"url": "file:///etc/passwd"}, httpResult{Kind: "invalid"}},
		{"response over the cap", map[string]any{"url": api + "/big"}, httpResult{Kind: "too_large"}},
		{"request time cap", map[string]any{"url": api + "/slow", "timeout_ms": 200}, httpResult{Kind: "timeout"}},
	}
	var reqs []map[string]any
	for _, tc := range tests {
		reqs = append(reqs, tc.req)
	}
	// All in one call, in order (MaxRequests is 12: run them in two calls).
	var results []httpResult
	for i := 0; i < len(reqs); i += 10 {
		results = append(results, w.run(t, s, w.policy, map[string]any{"requests": reqs[i:min(i+10, len(reqs))]})...)
	}
	for i, tc := range tests {
		got := results[i]
		switch {
		case tc.want.Kind == "" && (got.Status != tc.want.Status || got.Body != tc.want.Body):
			t.Errorf("%s: got %+v, want %d %q", tc.name, got, tc.want.Status, tc.want.Body)
		case tc.want.Kind != "" && (got.Kind != tc.want.Kind || !strings.Contains(got.Error, tc.want.Error)):
			t.Errorf("%s: got %+v, want kind %s saying %q", tc.name, got, tc.want.Kind, tc.want.Error)
		}
	}
	if n := w.canaryHits.Load(); n != 0 {
		t.Errorf("canaries hit %d times", n)
	}
	if w.dns.Saw("evil") {
		t.Errorf("the DNS server saw a denied name: %v", w.dns.Queries())
	}
	w.logMu.Lock()
	logs := w.deniedLog.String()
	w.logMu.Unlock()
	if !strings.Contains(logs, "call_id=wasm-call-1") || !strings.Contains(logs, "name=evil.test") {
		t.Errorf("denials not logged with the call id and name:\n%s", logs)
	}
}

func TestHTTPRequestCaps(t *testing.T) {
	w := newHTTPWorld(t)
	w.cfg.HTTP.MaxRequests = 2
	s := newSandbox(t, w.cfg)
	hello := map[string]any{"url": fmt.Sprintf("http://api.allowed.test:%d/hello", w.port)}
	res := w.run(t, s, w.policy, map[string]any{"requests": []any{hello, hello, hello}})
	if res[0].Status != 200 || res[1].Status != 200 || res[2].Kind != "limit" {
		t.Errorf("request cap: %+v", res)
	}
	// A guest buffer too small for the answer gets too_large (the host never writes past it).
	res = w.run(t, s, w.policy, map[string]any{"requests": []any{hello}, "buffer": 200})
	if res[0].Kind != "too_large" || !strings.Contains(res[0].Error, "buffer holds 200") {
		t.Errorf("small buffer: %+v", res)
	}
	res = w.run(t, s, w.policy, map[string]any{"requests": []any{hello}, "buffer": 10})
	if res[0].Kind != "too_large" {
		t.Errorf("tiny buffer: %+v", res)
	}
	// A request body over the cap.
	w.cfg.HTTP.MaxRequestBytes = 100
	s2 := newSandbox(t, w.cfg)
	res = w.run(t, s2, w.policy, map[string]any{"requests": []any{map[string]any{"method": "POST", "url": fmt.Sprintf("http://api.allowed.test:%d/echo", w.port), "body": []byte(strings.Repeat("y", 1000))}}})
	if res[0].Kind != "too_large" {
		t.Errorf("request body cap: %+v", res)
	}
}

func TestHTTPRequestWithoutPolicy(t *testing.T) {
	w := newHTTPWorld(t)
	s := newSandbox(t, w.cfg)
	res := w.run(t, s, egress.Policy{}, map[string]any{"requests": []any{map[string]any{"url": fmt.Sprintf("http://api.allowed.test:%d/hello", w.port)}}})
	if res[0].Kind != "denied" || !strings.Contains(res[0].Error, "no network policy") {
		t.Errorf("without a policy: %+v", res)
	}
	if w.allowedRequests.Load() != 0 || len(w.dns.Queries()) != 0 {
		t.Errorf("a call without a policy reached the server (%d) or DNS (%v)", w.allowedRequests.Load(), w.dns.Queries())
	}
	// A sandbox without a gate refuses calls that have a policy rather than run them without it.
	noGate := newSandbox(t, Config{})
	_, err := noGate.Run(context.Background(), call(httpGuest(t), map[string]any{}, sandbox.Limits{Egress: w.policy}))
	if !errors.Is(err, isolation.ErrTierUnavailable) {
		t.Errorf("policy without a gate: %v", err)
	}
}
