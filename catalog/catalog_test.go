package catalog_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"hello", true}, {"a", true}, {"0tool", true}, {"py-3.11_x", true}, {strings.Repeat("a", 63), true},
		{"", false}, {strings.Repeat("a", 64), false}, {"Hello", false}, {"-x", false}, {".x", false},
		{"a/b", false}, {"../etc", false}, {"a..b", false}, {"..", false}, {"a b", false}, {"a\x00", false},
		{"/abs", false}, {"é", false},
	}
	for _, tt := range tests {
		err := catalog.ValidateName(tt.name)
		if tt.ok != (err == nil) {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, isolation.ErrInvalidToolName) {
			t.Errorf("ValidateName(%q) error %v is not ErrInvalidToolName", tt.name, err)
		}
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestLoad(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "wasmy/tool.json"), `{"runtime":"WasmCompiled","entrypoint":"tool.wasm","timeout_ms":500,"memory_mb":32,"description":"d",
		"input_schema":{"type":"object","required":["name"],"properties":{"name":{"type":"string"}}}}`)
	write(t, filepath.Join(root, "wasmy/tool.wasm"), "\x00asm")
	write(t, filepath.Join(root, "bundle/config.json"), `{}`)
	os.MkdirAll(filepath.Join(root, "bundle/rootfs"), 0o755)
	write(t, filepath.Join(root, "py/tool.json"), `{"runtime":"Python","entrypoint":"main.py"}`)
	write(t, filepath.Join(root, "py/main.py"), "print(1)")
	write(t, filepath.Join(root, "escape/tool.json"), `{"runtime":"Shell","entrypoint":"../py/main.py"}`)
	write(t, filepath.Join(root, "badrt/tool.json"), `{"runtime":"Docker","entrypoint":"x"}`)
	write(t, filepath.Join(root, "nort/tool.json"), `{"entrypoint":"x"}`)
	write(t, filepath.Join(root, "extra/tool.json"), `{"runtime":"Shell","entrypoint":"x.sh","timeout":3}`)
	write(t, filepath.Join(root, "link/tool.json"), `{"runtime":"Shell","entrypoint":"x.sh"}`)
	os.Symlink("/etc/passwd", filepath.Join(root, "link/x.sh"))
	os.MkdirAll(filepath.Join(root, "empty"), 0o755)
	os.MkdirAll(filepath.Join(root, "Not_A_Name"), 0o755)

	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	w, err := c.Get("wasmy")
	if err != nil {
		t.Fatal(err)
	}
	if w.Runtime != isolation.RequireWasm || w.EntrypointPath != filepath.Join(root, "wasmy/tool.wasm") || w.Timeout().Milliseconds() != 500 || w.MemoryMB != 32 {
		t.Fatalf("wasmy = %+v", w)
	}
	if err := w.ValidateInput([]byte(`{"name":"x"}`)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{"name":3}`, `{}`, `[1]`} {
		if err := w.ValidateInput([]byte(bad)); !errors.Is(err, isolation.ErrInvalidInput) {
			t.Errorf("input %s: %v, want ErrInvalidInput", bad, err)
		}
	}
	b, err := c.Get("bundle")
	if err != nil || b.Runtime != isolation.RequireContainerImage {
		t.Fatalf("bundle = %+v, %v", b, err)
	}
	for name, want := range map[string]string{
		"escape": "inside the tool folder", "badrt": "unknown runtime requirement", "nort": `"runtime" is required`,
		"extra": "unknown field", "link": "outside the tool folder",
	} {
		_, err := c.Get(name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Get(%q) = %v, want error containing %q", name, err, want)
		}
	}
	for _, name := range []string{"empty", "missing"} {
		if _, err := c.Get(name); !errors.Is(err, isolation.ErrToolNotFound) {
			t.Errorf("Get(%q) = %v, want ErrToolNotFound", name, err)
		}
	}
	if _, err := c.Get("../etc"); !errors.Is(err, isolation.ErrInvalidToolName) {
		t.Errorf("Get(../etc) = %v", err)
	}
	tools, errs := c.List()
	var names []string
	for _, tl := range tools {
		names = append(names, tl.Name)
	}
	if got := strings.Join(names, ","); got != "bundle,py,wasmy" {
		t.Errorf("List names = %s", got)
	}
	if len(errs) != 5 {
		t.Errorf("List errors = %v, want 5", errs)
	}
}

func TestSchemaRefsAreNotFetched(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "r/tool.json"), `{"runtime":"NativeTrusted","input_schema":{"$ref":"http://127.0.0.1:1/x.json"}}`)
	c, _ := catalog.Open(root)
	if _, err := c.Get("r"); err == nil || !strings.Contains(err.Error(), "not loaded") {
		t.Fatalf("remote $ref: %v", err)
	}
}

// TestInputSchemas covers the schema dialects MCP clients send (2020-12, draft-07, no $schema) and
// the keywords tool authors use; a schema the validator cannot honour is refused at load.
func TestInputSchemas(t *testing.T) {
	tests := []struct {
		name, schema string
		valid        []string
		invalid      []string
		loadErr      string
	}{
		{name: "plain", schema: `{"type":"object","properties":{"n":{"type":"integer","minimum":1}},"required":["n"],"additionalProperties":false}`,
			valid: []string{`{"n":1}`, `{"n":7}`}, invalid: []string{`{"n":0}`, `{"n":1.5}`, `{"n":"1"}`, `{"n":1,"x":2}`, `{}`, `null`}},
		{name: "draft2020", schema: `{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"array","prefixItems":[{"type":"string"}],"items":{"type":"number"}}`,
			valid: []string{`["a",1,2.5]`, `[]`}, invalid: []string{`[1]`, `["a","b"]`}},
		{name: "draft07", schema: `{"$schema":"http://json-schema.org/draft-07/schema#","definitions":{"s":{"type":"string","maxLength":3}},"type":"object","properties":{"s":{"$ref":"#/definitions/s"}}}`,
			valid: []string{`{"s":"abc"}`, `{}`}, invalid: []string{`{"s":"abcd"}`, `{"s":1}`}},
		{name: "enum-oneof", schema: `{"oneOf":[{"enum":["a","b"]},{"type":"boolean"}]}`,
			valid: []string{`"a"`, `true`}, invalid: []string{`"c"`, `1`}},
		{name: "draft04", schema: `{"$schema":"http://json-schema.org/draft-04/schema#","type":"object"}`, loadErr: "draft-04"},
		{name: "not-a-schema", schema: `{"type":5}`, loadErr: "type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			write(t, filepath.Join(root, "s/tool.json"), `{"runtime":"NativeTrusted","input_schema":`+tt.schema+`}`)
			c, _ := catalog.Open(root)
			tool, err := c.Get("s")
			if tt.loadErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.loadErr) {
					t.Fatalf("Get = %v, want an error naming %q", err, tt.loadErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, in := range tt.valid {
				if err := tool.ValidateInput([]byte(in)); err != nil {
					t.Errorf("valid input %s refused: %v", in, err)
				}
			}
			for _, in := range append(tt.invalid, `{"unterminated`) {
				if err := tool.ValidateInput([]byte(in)); !errors.Is(err, isolation.ErrInvalidInput) {
					t.Errorf("input %s: %v, want ErrInvalidInput", in, err)
				}
			}
		})
	}
}

func TestChangesOnDiskAreSeen(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "t/tool.json"), `{"runtime":"Shell","entrypoint":"a.sh","description":"one"}`)
	write(t, filepath.Join(root, "t/a.sh"), "true")
	c, _ := catalog.Open(root)
	first, err := c.Get("t")
	if err != nil || first.Description != "one" {
		t.Fatalf("%+v %v", first, err)
	}
	if again, _ := c.Get("t"); again != first {
		t.Errorf("an unchanged tool was parsed again")
	}
	write(t, filepath.Join(root, "t/tool.json"), `{"runtime":"Shell","entrypoint":"a.sh","description":"two, longer"}`)
	if got, err := c.Get("t"); err != nil || got.Description != "two, longer" {
		t.Fatalf("after rewriting tool.json: %+v %v", got, err)
	}
	// An entrypoint swapped for a symlink out of the folder is refused again, not served from
	// the cache.
	os.Remove(filepath.Join(root, "t/a.sh"))
	if err := os.Symlink("/etc/passwd", filepath.Join(root, "t/a.sh")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("t"); err == nil || !strings.Contains(err.Error(), "outside the tool folder") {
		t.Fatalf("after swapping the entrypoint for a symlink: %v", err)
	}
	os.RemoveAll(filepath.Join(root, "t"))
	if _, err := c.Get("t"); !errors.Is(err, isolation.ErrToolNotFound) {
		t.Fatalf("after removing the folder: %v", err)
	}
}

// A script tool's "base" names a bundle folder of the tools root: a name, never a path, for
// Python, Shell and Arbitrary tools only; anything else is a typed invalid_tool naming what is
// wrong.
func TestBase(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "pybase/config.json"), `{}`)
	if err := os.MkdirAll(filepath.Join(root, "pybase/rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "notbundle/tool.json"), `{"runtime":"Shell","entrypoint":"x.sh"}`)
	write(t, filepath.Join(root, "notbundle/x.sh"), "exit 0")
	outside := t.TempDir()
	write(t, filepath.Join(outside, "config.json"), `{}`)
	os.MkdirAll(filepath.Join(outside, "rootfs"), 0o755)
	if err := os.Symlink(outside, filepath.Join(root, "escapes")); err != nil {
		t.Fatal(err)
	}
	tool := func(name, manifest string) {
		write(t, filepath.Join(root, name, "tool.json"), manifest)
		write(t, filepath.Join(root, name, "main.py"), "print(1)")
	}
	tool("good", `{"runtime":"Python","entrypoint":"main.py","base":"pybase"}`)
	tool("dotdot", `{"runtime":"Python","entrypoint":"main.py","base":"../pybase"}`)
	tool("abs", `{"runtime":"Python","entrypoint":"main.py","base":"/var/axocoatl/bundles/pybase"}`)
	tool("slash", `{"runtime":"Python","entrypoint":"main.py","base":"pybase/rootfs"}`)
	tool("missing", `{"runtime":"Python","entrypoint":"main.py","base":"nosuch"}`)
	tool("notabundle", `{"runtime":"Python","entrypoint":"main.py","base":"notbundle"}`)
	tool("escaping", `{"runtime":"Python","entrypoint":"main.py","base":"escapes"}`)
	tool("wasm", `{"runtime":"WasmCompiled","entrypoint":"main.py","base":"pybase"}`)
	tool("typed", `{"runtime":"Python","entrypoint":"main.py","base":7}`)
	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	g, err := c.Get("good")
	if err != nil {
		t.Fatal(err)
	}
	if g.Base != "pybase" || g.BasePath != filepath.Join(root, "pybase") {
		t.Errorf("base %q at %q", g.Base, g.BasePath)
	}
	for name, want := range map[string]string{
		"dotdot": "not a name", "abs": "not a name", "slash": "not a name", "missing": "nosuch",
		"notabundle": "not an OCI bundle", "escaping": "escapes", "wasm": "not WasmCompiled", "typed": "base",
	} {
		_, err := c.Get(name)
		if !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want invalid_tool mentioning %q", name, err, want)
		}
	}
	// Replacing the base's folder is seen at the next lookup.
	if err := os.Rename(filepath.Join(root, "pybase"), filepath.Join(root, "pybase-old")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("good"); !errors.Is(err, isolation.ErrInvalidTool) {
		t.Errorf("base removed: err = %v, want invalid_tool", err)
	}
}

// TestNewBuiltinRules: a tool registered without a folder is checked by tool.json's rules.
func TestNewBuiltinRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		tool string
		m    catalog.Manifest
		want error // nil: accepted
	}{
		{"native", "f", catalog.Manifest{Runtime: isolation.RequireNativeTrusted, InputSchema: []byte(`{"type":"object"}`)}, nil},
		{"wasm with limits", "w", catalog.Manifest{Runtime: isolation.RequireWasm, TimeoutMS: 1, MemoryMB: 1}, nil},
		{"bad name", "a/b", catalog.Manifest{Runtime: isolation.RequireNativeTrusted}, isolation.ErrInvalidToolName},
		{"container image", "c", catalog.Manifest{Runtime: isolation.RequireContainerImage}, isolation.ErrInvalidTool},
		{"entrypoint", "e", catalog.Manifest{Runtime: isolation.RequireWasm, Entrypoint: "m.wasm"}, isolation.ErrInvalidTool},
		{"base", "b", catalog.Manifest{Runtime: isolation.RequireShell, Base: "pybase"}, isolation.ErrInvalidTool},
		{"negative timeout", "t", catalog.Manifest{Runtime: isolation.RequireWasm, TimeoutMS: -1}, isolation.ErrInvalidTool},
		{"timeout over a day", "t", catalog.Manifest{Runtime: isolation.RequireWasm, TimeoutMS: catalog.MaxTimeoutMS + 1}, isolation.ErrInvalidTool},
		{"memory over 1 TiB", "m", catalog.Manifest{Runtime: isolation.RequireWasm, MemoryMB: catalog.MaxMemoryMB + 1}, isolation.ErrInvalidTool},
		{"schema cycle", "s", catalog.Manifest{Runtime: isolation.RequireNativeTrusted, InputSchema: []byte(`{"$ref":"#"}`)}, isolation.ErrInvalidTool},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl, err := catalog.NewBuiltin(tc.tool, tc.m)
			if tc.want == nil {
				if err != nil || tl.Name != tc.tool || tl.Runtime != tc.m.Runtime || tl.TimeoutMS != tc.m.TimeoutMS || tl.Dir != "" {
					t.Fatalf("NewBuiltin = %+v, %v", tl, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewBuiltin = %v, want %v", err, tc.want)
			}
		})
	}
}
