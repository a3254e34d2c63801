package axoiso

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation/sandbox/wasm"
)

// TestWasmConfig: the config file's wasm section reaches the tier's Config.
func TestWasmConfig(t *testing.T) {
	p := filepath.Join(t.TempDir(), "axoiso.json")
	if err := os.WriteFile(p, []byte(`{"wasm":{"max_concurrency":3,"max_queued":-1,"queue_timeout":"150ms","max_modules":5,"max_module_mb":200,
		"http":{"max_request_bytes":1000,"max_response_bytes":2000,"max_requests":3,"max_redirects":1,"timeout":"2s"}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		in   WasmConfig
		want wasm.Config
	}{
		{"from the file", c.Wasm, wasm.Config{MaxConcurrency: 3, MaxQueued: -1, QueueTimeout: 150 * time.Millisecond, MaxModules: 5, MaxModuleBytes: 200 << 20,
			HTTP: wasm.HTTPConfig{MaxRequestBytes: 1000, MaxResponseBytes: 2000, MaxRequests: 3, MaxRedirects: 1, Timeout: 2 * time.Second}}},
		{"defaults", WasmConfig{}, wasm.Config{}},
		{"no wrap", WasmConfig{MaxModuleMB: 1 << 62, HTTP: WasmHTTPConfig{MaxRequestBytes: 1 << 62, MaxResponseBytes: 1 << 62}},
			wasm.Config{MaxModuleBytes: 1 << 50, HTTP: wasm.HTTPConfig{MaxRequestBytes: 1 << 30, MaxResponseBytes: 1 << 30}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.sandboxConfig(nil)
			if got.MaxConcurrency != tc.want.MaxConcurrency || got.MaxQueued != tc.want.MaxQueued || got.QueueTimeout != tc.want.QueueTimeout ||
				got.MaxModules != tc.want.MaxModules || got.MaxModuleBytes != tc.want.MaxModuleBytes || got.HTTP != tc.want.HTTP {
				t.Fatalf("sandboxConfig = %+v, want %+v", got, tc.want)
			}
		})
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"wasm":{"max_queue":1}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(bad); err == nil {
		t.Fatal("an unknown key of the wasm section was accepted")
	}
}

// TestWasmHTTPCAFile: wasm.http.ca_file is checked when the executor is built, naming the key.
func TestWasmHTTPCAFile(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, file, want string }{
		{"missing", filepath.Join(dir, "missing.pem"), "no such file"},
		{"no certificate", notPEM, "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(Config{ToolsRoot: dir, CacheDir: t.TempDir(), DisableTiers: []string{"Oci", "Firecracker"},
				Wasm: WasmConfig{HTTP: WasmHTTPConfig{CAFile: tc.file}}})
			if err == nil || !strings.Contains(err.Error(), "wasm.http.ca_file") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want an error naming wasm.http.ca_file and saying %q", err, tc.want)
			}
		})
	}
}
