package axoiso

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/egresstest"
	"github.com/axocoatl/isolation/internal/fakenet"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/internal/wasmbuild"
)

// wasmEgressToolsEnv names the tools root the parent of TestWasmEgressChild built.
const wasmEgressToolsEnv = "AXO_WASM_EGRESS_TOOLS"

// TestWasmEgress: a Wasm tool's http_request goes through the egress gate New gives the Wasm
// tier, under the tool's effective policy (tool.json ∩ the config's grants), in a fake internet
// (see internal/fakenet): the test proves the wiring; sandbox/wasm's TestHTTPRequest covers the
// policy matrix against the host function itself.
func TestWasmEgress(t *testing.T) {
	testutil.RequiresRoot(t, "the fake internet lives in network namespaces")
	bin := testutil.WasmModule(t, "../sandbox/wasm/testdata/httpguest", wasmbuild.Config{})
	root := t.TempDir()
	// fetch asks for more than the config grants it (other.test:80): that part is reported, not
	// granted. fetch-short is the same module with a short timeout.
	for name, extra := range map[string]string{"fetch": ``, "fetch-short": `,"timeout_ms":1500`} {
		dir := filepath.Join(root, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		manifest := `{"runtime":"WasmCompiled","entrypoint":"fetch.wasm","network":{"egress":["api.allowed.test:80","api.allowed.test:443","*.allowed.test:80","other.test:80"]}` + extra + `}`
		if err := os.WriteFile(filepath.Join(dir, "tool.json"), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "fetch.wasm"), bin, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := fakenet.RunInNetns("TestWasmEgressChild", wasmEgressToolsEnv+"="+root)
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestWasmEgressChild")) {
		t.Fatalf("TestWasmEgressChild: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// TestWasmEgressChild is TestWasmEgress in its network namespace.
func TestWasmEgressChild(t *testing.T) {
	root := os.Getenv(wasmEgressToolsEnv)
	if root == "" || os.Getenv(fakenet.InNetns) == "" {
		t.Skip("run by TestWasmEgress")
	}
	in, err := fakenet.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	defer egresstest.MarkTestNetPublic()()
	var logs testutil.LogBuffer
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, []byte(in.CA), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{
		ToolsRoot:    root,
		CacheDir:     filepath.Join(os.TempDir(), "axocoatl-wasmbuild-cache", "axoiso-egress"),
		DisableTiers: []string{"Oci", "Firecracker"},
		Wasm:         WasmConfig{HTTP: WasmHTTPConfig{CAFile: caFile}}, // api.allowed.test's CA
		Logger:       slog.New(slog.NewTextHandler(&logs, nil)),
		Egress: EgressConfig{
			Resolver: in.Resolver,
			Tools:    map[string][]string{"fetch": {"**.allowed.test:80", "api.allowed.test:443"}, "fetch-short": {"**.allowed.test:80"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	api := "http://api.allowed.test"
	tests := []struct {
		name string
		url  string
		opts map[string]any
		want httpGuestResult // Status/Body on success; else Kind and a substring of Error
	}{
		{"allowed name", api + "/", nil, httpGuestResult{Status: 200, Body: fakenet.AllowedBody}},
		{"allowed name over https (verified against wasm.http.ca_file)", "https://api.allowed.test/", nil, httpGuestResult{Status: 200, Body: fakenet.AllowedBody}},
		{"asked, not granted", "http://other.test/", nil, httpGuestResult{Kind: "denied", Error: "other.test"}},
		{"https to a host not granted", "https://other.test/", nil, httpGuestResult{Kind: "denied", Error: "other.test"}},
		{"redirect to a host not allowed", api + "/redirect", nil, httpGuestResult{Kind: "denied", Error: "other.test"}},
		{"redirect to the metadata address", api + "/redirect?to=http://169.254.169.254/", nil, httpGuestResult{Kind: "denied"}},
		{"allowed name resolving to the metadata address", "http://meta.allowed.test/", nil, httpGuestResult{Kind: "denied", Error: "deny set"}},
		{"allowed name resolving to loopback", "http://local.allowed.test/", nil, httpGuestResult{Kind: "denied", Error: "deny set"}},
		{"allowed name resolving to RFC 1918", "http://ten.allowed.test/", nil, httpGuestResult{Kind: "denied", Error: "deny set"}},
		{"IP literal of the allowed host", "http://" + fakenet.AllowedIP + "/", nil, httpGuestResult{Kind: "denied"}},
		{"suffix trick without the dot", "http://evilallowed.test/", nil, httpGuestResult{Kind: "denied"}},
		{"suffix trick as a subdomain", "http://allowed.test.evil.test/", nil, httpGuestResult{Kind: "denied"}},
		{"port not granted", "http://api.allowed.test:8080/", nil, httpGuestResult{Kind: "denied"}},
		{"response over the size cap", api + "/big", nil, httpGuestResult{Kind: "too_large"}},
		{"request over its time cap", api + "/slow", map[string]any{"timeout_ms": 300}, httpGuestResult{Kind: "timeout"}},
	}
	var reqs []map[string]any
	for _, tc := range tests {
		r := map[string]any{"url": tc.url}
		for k, v := range tc.opts {
			r[k] = v
		}
		reqs = append(reqs, r)
	}
	input, _ := json.Marshal(map[string]any{"requests": reqs})
	res, err := e.Execute(context.Background(), "fetch", input)
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if res.Tier != isolation.TierWasm {
		t.Fatalf("ran in %s", res.Tier)
	}
	var got struct{ Results []httpGuestResult }
	if err := json.Unmarshal(res.Output, &got); err != nil || len(got.Results) != len(tests) {
		t.Fatalf("output %s: %v", res.Output, err)
	}
	for i, tc := range tests {
		g := got.Results[i]
		switch {
		case tc.want.Kind == "" && (g.Status != tc.want.Status || g.Body != tc.want.Body):
			t.Errorf("%s: got %+v, want %d %q", tc.name, g, tc.want.Status, tc.want.Body)
		case tc.want.Kind != "" && (g.Kind != tc.want.Kind || !strings.Contains(g.Error, tc.want.Error)):
			t.Errorf("%s: got %+v, want kind %s saying %q", tc.name, g, tc.want.Kind, tc.want.Error)
		}
	}
	// What was asked and not granted is in the envelope.
	if ng := res.Limits.EgressNotGranted; len(ng) != 1 || ng[0].Pattern != "other.test:80" {
		t.Errorf("egress_not_granted = %+v, want other.test:80", ng)
	}
	// The call's time cap holds whatever the request asks: the tool's 1.5 s timeout ends a
	// request that the host's 10 s default would still wait for.
	start := time.Now()
	input, _ = json.Marshal(map[string]any{"requests": []any{map[string]any{"url": api + "/slow"}}})
	_, err = e.Execute(context.Background(), "fetch-short", input)
	if !errors.Is(err, isolation.ErrTimeout) {
		t.Errorf("fetch-short of /slow: %v, want a timeout", err)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("fetch-short took %v, past its 1.5 s timeout", d)
	}

	if h := in.Hits(); len(h) != 0 {
		t.Errorf("canaries hit: %v", h)
	}
	if q := in.QueriedOutside("api.allowed.test", "meta.allowed.test", "local.allowed.test", "ten.allowed.test"); len(q) != 0 {
		t.Errorf("the DNS server was asked names outside the policy: %v", q)
	}
	if s := logs.String(); !strings.Contains(s, "call_id="+res.CallID) || !strings.Contains(s, "other.test") {
		t.Errorf("denials not logged with the call id and the name:\n%s", s)
	}
}

// httpGuestResult is one result of sandbox/wasm/testdata/httpguest.
type httpGuestResult struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
	URL    string `json:"url"`
	Error  string `json:"error"`
	Kind   string `json:"kind"`
}
