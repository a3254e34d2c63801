package axoiso

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "axoiso.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A config file cannot be silently wrong: every mistake is an error naming the key as the file
// spells it, with a suggestion where one is near, never a Go field name.
func TestConfigRejectsMistakes(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string // substrings of the error
	}{
		{"unknown nested key", `{"oci":{"pool_sise":3}}`, []string{`unknown key "oci.pool_sise"; did you mean "oci.pool_size"?`}},
		{"unknown top key", `{"stict":true}`, []string{`unknown key "stict"; did you mean "strict"?`}},
		{"unknown far key", `{"vm":{"zzzzzz":1}}`, []string{`unknown key "vm.zzzzzz"`, "(vm has "}},
		{"tier typo", `{"disable_tiers":["Firecraker"]}`, []string{`disable_tiers[0]: "Firecraker" is not one of None, Wasmtime, Oci, Firecracker; did you mean "Firecracker"?`}},
		{"ceiling tier typo", `{"max_memory_mb":{"Wasmtim":10}}`, []string{`max_memory_mb: key "Wasmtim"`, `did you mean "Wasmtime"?`}},
		{"wrong type", `{"oci":{"runtime_root":5}}`, []string{`oci.runtime_root: want a string, got the number 5`}},
		{"wrong type int", `{"oci":{"pool_size":"2"}}`, []string{`oci.pool_size: want a whole number, got a string "2"`}},
		{"bad duration", `{"vm":{"pool_idle":"5 minutes"}}`, []string{`vm.pool_idle: `, `duration "5 minutes"`}},
		{"backend typo", `{"oci":{"backend":"crunn"}}`, []string{`oci.backend: "crunn" is not one of libcontainer, crun, runc; did you mean "crun"?`}},
		{"kvm value", `{"vm":{"kvm":"yes"}}`, []string{`vm.kvm: "yes" is not one of auto, on, off`}},
		{"jailer mode", `{"vm":{"jailer":{"mode":"of"}}}`, []string{`vm.jailer.mode: "of" is not one of auto, on, off; did you mean "on"?`}},
		{"not an object", `{"oci":[1]}`, []string{`oci: want an object, got a list`}},
		{"Go name", `{"Oci":{"PoolSize":1}}`, []string{`unknown key "Oci"; did you mean "oci"?`}},
		{"several", `{"oci":{"pool_sise":3},"strict":"yes"}`, []string{`"oci.pool_sise"`, `strict: want true or false, got a string`}},
		{"trailing", `{} {}`, []string{"trailing data"}},
		{"secret without source", `{"secrets":{"fetcher":{"API_KEY":{}}}}`, []string{`secrets.fetcher.API_KEY: give exactly one of "file" and "env"`}},
		{"secret source typo", `{"secrets":{"fetcher":{"API_KEY":{"fiel":"/k"}}}}`, []string{`unknown key "secrets.fetcher.API_KEY.fiel"; did you mean "secrets.fetcher.API_KEY.file"?`}},
		{"secret bad tool", `{"secrets":{"Bad Name":{"K":{"env":"X"}}}}`, []string{`secrets.Bad Name: `}},
		{"secret bad var", `{"secrets":{"t":{"1K":{"env":"X"}}}}`, []string{`secrets.t: "1K" is not a variable name`}},
		{"secret relative file", `{"secrets":{"t":{"K":{"file":"k"}}}}`, []string{`secrets.t.K.file: "k" is not an absolute path`}},
		{"removed host network", `{"oci":{"allow_network":true}}`, []string{`"oci.allow_network" was removed`, `"network": {"egress"`}},
		{"bad net prefix type", `{"egress":{"net_prefix":3}}`, []string{`egress.net_prefix: want a string`}},
		{"tracing protocol", `{"tracing":{"otlp_endpoint":"http://127.0.0.1:4318","protocol":"grcp"}}`, []string{`tracing.protocol: "grcp" is not one of http, grpc; did you mean "grpc"?`}},
		{"tracing endpoint not a URL", `{"tracing":{"otlp_endpoint":"127.0.0.1:4318"}}`, []string{`tracing.otlp_endpoint: want an http:// or https:// URL`}},
		{"tracing ratio", `{"tracing":{"otlp_endpoint":"http://127.0.0.1:4318","sample_ratio":1.5}}`, []string{`tracing.sample_ratio: want a number in (0, 1], got 1.5`}},
		{"tracing without endpoint", `{"tracing":{"sample_ratio":0.5}}`, []string{`tracing.otlp_endpoint: missing`}},
		{"tracing key typo", `{"tracing":{"otlp_endpiont":"http://127.0.0.1:4318"}}`, []string{`unknown key "tracing.otlp_endpiont"; did you mean "tracing.otlp_endpoint"?`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, tc.body))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("err %v, want a *ConfigError", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			for _, goName := range []string{"OciConfig", "VMConfig", "Config.", "PoolSize", "RuntimeRoot", "Go struct"} {
				if strings.Contains(err.Error(), goName) && !strings.Contains(tc.body, goName) {
					t.Errorf("error %q names a Go field or type (%s)", err, goName)
				}
			}
		})
	}
}

func TestConfigAcceptsTheDocumentedExample(t *testing.T) {
	// The README's example config, every key.
	body := `{
  "tools_root": "/var/axocoatl/bundles", "strict": false, "max_output_bytes": 1048576,
  "default_timeout": "10s", "max_timeout": "60s",
  "max_memory_mb": {"Wasmtime": 256, "Oci": 1024, "Firecracker": 1024},
  "cache_dir": "/var/cache/axocoatl", "data_dir": "/var/lib/axocoatl", "disable_tiers": ["Firecracker"],
  "isolation": {"ContainerImage": "Oci"}, "tool_isolation": {},
  "wasm": {"max_concurrency": 0, "max_queued": 0, "queue_timeout": "2s", "max_modules": 64,
           "max_module_mb": 1024},
  "oci": {"state_root": "/run/axocoatl/oci", "use_systemd": false, "backend": "libcontainer",
          "runtime_root": "", "pool_size": 2, "pool_idle": "5m", "pool_max_total": 32,
          "pool_max_memory_mb": 2048, "memory_mb": 256, "pids": 128, "cpus": 1,
          "io_size_mb": 4, "id_user": "axocoatl", "id_slots": 1024},
  "vm": {"pool_size": 0, "snapshot": false, "pool_idle": "5m", "max_shapes": 4,
         "pool_max_total": 4, "pool_max_memory_mb": 2048, "kvm": "off",
         "vcpus": 1, "firecracker": "", "jailer": {"mode": "auto"}, "kernel_args": "", "drive_cache_mb": 4096},
  "serve": {"read_header_timeout": "10s", "body_timeout": "10s", "idle_timeout": "60s", "max_mcp_sessions": 256}
}`
	c, src, err := ReadConfig(writeConfig(t, body))
	if err != nil {
		t.Fatal(err)
	}
	if c.Oci.PoolSize != 2 || len(c.DisableTiers) != 1 || !src.Present {
		t.Errorf("decoded %+v, %+v", c, src)
	}
	for _, k := range []string{"oci.pool_size", "vm.jailer.mode", "disable_tiers", "max_memory_mb", "serve.max_mcp_sessions", "isolation", "vm.drive_cache_mb"} {
		if !contains(src.Keys, k) {
			t.Errorf("keys %v lack %s", src.Keys, k)
		}
	}
	if contains(src.Keys, "disable_tiers[0]") {
		t.Errorf("a list element counted as a key: %v", src.Keys)
	}
}

func TestSettingsShowDefaults(t *testing.T) {
	got := map[string]string{}
	for _, s := range (Config{Oci: OciConfig{PoolSize: 5}}).WithDefaults().Settings() {
		got[s.Key] = string(s.Value)
	}
	for k, want := range map[string]string{"oci.pool_size": "5", "oci.pids": "128", "tools_root": `"` + DefaultToolsRoot + `"`, "vm.jailer.mode": `"auto"`} {
		if k == "tools_root" && os.Getenv(EnvTools) != "" {
			continue
		}
		if got[k] != want {
			t.Errorf("%s = %s, want %s", k, got[k], want)
		}
	}
	if _, ok := got["Logger"]; ok {
		t.Error("a field outside the file (Logger) is listed")
	}
}

func TestDocumentedDefaultsAreKeys(t *testing.T) {
	keys := map[string]bool{}
	for _, s := range (Config{}).Settings() {
		keys[s.Key] = true
	}
	for k := range documentedDefaults {
		if !keys[k] {
			t.Errorf("documentedDefaults has %q, which is no config key", k)
		}
	}
	for k := range enumKeys {
		if !keys[strings.TrimSuffix(k, "[]")] {
			t.Errorf("enumKeys has %q, which is no config key", k)
		}
	}
	if DefaultJailerID != 1895890944 {
		t.Error("vm.jailer.uid's documented default is stale")
	}
}
