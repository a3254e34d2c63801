package catalog_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
)

// Seeds shared by the schema fuzzers: every dialect, the recursive shapes that are legitimate, and
// the cyclic ones that used to overflow the validator's stack.
var schemaSeeds = []string{
	`{"type":"object","properties":{"n":{"type":"integer","minimum":1}},"required":["n"],"additionalProperties":false}`,
	`{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"array","prefixItems":[{"type":"string"}],"items":{"type":"number"}}`,
	`{"$schema":"http://json-schema.org/draft-07/schema#","definitions":{"s":{"type":"string","maxLength":3}},"properties":{"s":{"$ref":"#/definitions/s"}}}`,
	`{"$defs":{"node":{"type":"object","properties":{"children":{"type":"array","items":{"$ref":"#/$defs/node"}}}}},"$ref":"#/$defs/node"}`,
	`{"$defs":{"a":{"anyOf":[{"items":{"$ref":"#/$defs/a"}},{"items":{"$ref":"#/$defs/a"}}]}},"$ref":"#/$defs/a"}`,
	`{"$ref":"#"}`,
	`{"allOf":[{"$ref":"#"}]}`,
	`{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}`,
	`{"$dynamicAnchor":"n","anyOf":[{"$dynamicRef":"#n"}]}`,
	`{"$defs":{"a":{"$id":"a.json","$ref":"b.json"},"b":{"$id":"b.json","$ref":"a.json"}},"$ref":"a.json"}`,
	`{"$defs":{"a":{"$anchor":"x","oneOf":[{"$ref":"#x"}]}},"$ref":"#x"}`,
	`{"if":{"type":"object"},"then":{"$ref":"#"},"else":true}`,
	`{"$schema":"http://json-schema.org/draft-07/schema#","dependencies":{"a":{"$ref":"#"}}}`,
	`{"patternProperties":{"^a":{"$ref":"#"}},"propertyNames":{"maxLength":3},"unevaluatedProperties":false}`,
	`{"contains":{"$ref":"#"},"uniqueItems":true,"enum":[[1],[2]]}`,
	`{"oneOf":[{"enum":["a","b"]},{"type":"boolean"}],"not":{"const":"c"}}`,
	`true`, `false`, `{}`,
}

var inputSeeds = []string{`{}`, `[]`, `"x"`, `1`, `null`, `{"n":1}`, `[[[[["x"]]]]]`, `{"children":[{"children":[]}]}`, `{"a":{"a":{"a":1}}}`}

// checkValidation validates input against a loaded tool: it must return, and its error must be
// typed.
func checkValidation(t *testing.T, tl *catalog.Tool, input []byte) {
	t.Helper()
	if err := catalog.CheckInput(tl.Name, input); err != nil {
		if !errors.Is(err, isolation.ErrInvalidInput) {
			t.Fatalf("CheckInput: untyped error %v", err)
		}
		return
	}
	done := make(chan error, 1)
	go func() { done <- tl.ValidateInput(input) }()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, isolation.ErrInvalidInput) {
			t.Fatalf("ValidateInput: untyped error %v", err)
		}
		if err != nil && len(err.Error()) > 8192 {
			t.Fatalf("ValidateInput: a %d-byte error", len(err.Error()))
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("ValidateInput(%.100q) against %.200s did not return", input, tl.InputSchema)
	}
}

// FuzzLoadManifest: any bytes as tool.json load or fail with a typed error, never panic or hang;
// a loaded tool's limits are in range and its schema validates inputs without crashing.
func FuzzLoadManifest(f *testing.F) {
	for _, m := range []string{
		`{"runtime":"NativeTrusted"}`,
		`{"runtime":"WasmCompiled","entrypoint":"tool.wasm","timeout_ms":500,"memory_mb":32,"description":"d"}`,
		`{"runtime":"Python","entrypoint":"main.py","network":true}`,
		`{"runtime":"Python","entrypoint":"main.py","network":{"egress":["a.b.com:443","*.c.d:1","10.0.0.0/8:5/udp"]}}`,
		`{"runtime":"Shell","entrypoint":"../x"}`,
		`{"runtime":"Shell","entrypoint":"link"}`,
		`{"runtime":"Java"}`,
		`{"runtime":"NativeTrusted","memory_mb":17592186044416}`,
		`{"runtime":"NativeTrusted","timeout_ms":-1}`,
		`{"runtime":"NativeTrusted"} trailing`,
		`{"runtime":"ContainerImage"}`,
		`{"runtime":"NativeTrusted","unknown":1}`,
		"\xef\xbb\xbf{}", `[]`, `null`, ``,
	} {
		f.Add([]byte(m))
	}
	for _, s := range schemaSeeds {
		f.Add([]byte(`{"runtime":"NativeTrusted","input_schema":` + s + `}`))
	}
	f.Fuzz(func(t *testing.T, manifest []byte) {
		root := t.TempDir()
		dir := filepath.Join(root, "t")
		os.MkdirAll(filepath.Join(dir, "rootfs"), 0o755)
		os.WriteFile(filepath.Join(dir, "tool.wasm"), []byte("\x00asm"), 0o644)
		os.WriteFile(filepath.Join(dir, "main.py"), []byte("print(1)"), 0o644)
		os.WriteFile(filepath.Join(dir, "config.json"), []byte("{}"), 0o644)
		os.Symlink("/etc/passwd", filepath.Join(dir, "link"))
		if err := os.WriteFile(filepath.Join(dir, catalog.ManifestFile), manifest, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := catalog.Open(root)
		if err != nil {
			t.Fatal(err)
		}
		tl, err := c.Get("t")
		if err != nil {
			if !errors.Is(err, isolation.ErrInvalidTool) {
				t.Fatalf("Get: untyped error %v", err)
			}
			return
		}
		if tl.MemoryMB < 0 || tl.MemoryMB > catalog.MaxMemoryMB || tl.TimeoutMS < 0 || tl.TimeoutMS > catalog.MaxTimeoutMS {
			t.Fatalf("loaded with limits out of range: %+v", tl.Manifest)
		}
		if tl.EntrypointPath != "" {
			if r, err := filepath.Rel(tl.Dir, tl.EntrypointPath); err != nil || !filepath.IsLocal(r) {
				t.Fatalf("entrypoint %s is outside %s", tl.EntrypointPath, tl.Dir)
			}
		}
		for _, in := range inputSeeds {
			checkValidation(t, tl, []byte(in))
		}
	})
}

// FuzzSchemaValidate: any schema compiles or is refused with a typed error; any input against a
// compiled schema validates or is refused with a typed error, never crashing the process (a
// stack overflow is fatal) or hanging.
func FuzzSchemaValidate(f *testing.F) {
	for i, s := range schemaSeeds {
		f.Add([]byte(s), []byte(inputSeeds[i%len(inputSeeds)]))
	}
	f.Add([]byte(schemaSeeds[4]), []byte(strings.Repeat("[", 30)+strings.Repeat("]", 30)))
	f.Add([]byte(schemaSeeds[3]), []byte(strings.Repeat(`{"children":[`, 200)+strings.Repeat("]}", 200)))
	f.Fuzz(func(t *testing.T, schema, input []byte) {
		tl, err := catalog.NewBuiltin("f", catalog.Manifest{Runtime: isolation.RequireNativeTrusted, InputSchema: schema})
		if err != nil {
			if !errors.Is(err, isolation.ErrInvalidTool) && !errors.Is(err, isolation.ErrInvalidToolName) {
				t.Fatalf("NewBuiltin: untyped error %v", err)
			}
			return
		}
		checkValidation(t, tl, input)
		for _, in := range inputSeeds {
			checkValidation(t, tl, []byte(in))
		}
	})
}

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// FuzzValidateName: ValidateName accepts exactly ^[a-z0-9][a-z0-9._-]{0,62}$ without "..", and
// an accepted name is always one local path element.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"hello", "a", "py-3.11_x", "", "..", "a..b", "a/b", "../etc", "-x", "Hello", "a\x00", "é", strings.Repeat("a", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := catalog.ValidateName(name)
		want := namePattern.MatchString(name) && !strings.Contains(name, "..")
		if (err == nil) != want {
			t.Fatalf("ValidateName(%q) = %v, want ok=%v", name, err, want)
		}
		if err != nil && !errors.Is(err, isolation.ErrInvalidToolName) {
			t.Fatalf("ValidateName(%q): untyped error %v", name, err)
		}
		if err == nil && (!filepath.IsLocal(name) || filepath.Base(name) != name || name == "." || strings.ContainsRune(name, filepath.Separator)) {
			t.Fatalf("ValidateName accepted %q, which is not one local path element", name)
		}
	})
}

// FuzzEntrypoint: whatever the entrypoint string, a tool that loads has an entrypoint that is a
// regular file inside its folder; everything else is ErrInvalidTool.
func FuzzEntrypoint(f *testing.F) {
	for _, s := range []string{"run.sh", "sub/run.sh", "./run.sh", "in", "out", "abs", "fifo", "sub", "sub/../run.sh", "../t/run.sh", "/etc/passwd", "", ".", "run.sh/", "loop", "a\x00b", "proc"} {
		f.Add(s)
	}
	root := f.TempDir()
	outside := f.TempDir()
	dir := filepath.Join(root, "t")
	os.MkdirAll(filepath.Join(dir, "sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "run.sh"), []byte("true"), 0o755)
	os.WriteFile(filepath.Join(dir, "sub/run.sh"), []byte("true"), 0o755)
	os.WriteFile(filepath.Join(outside, "x.sh"), []byte("true"), 0o755)
	os.Symlink("run.sh", filepath.Join(dir, "in"))
	os.Symlink(filepath.Join(outside, "x.sh"), filepath.Join(dir, "abs"))
	os.Symlink("../../"+filepath.Base(outside)+"/x.sh", filepath.Join(dir, "out"))
	os.Symlink("loop", filepath.Join(dir, "loop"))
	os.Symlink("/proc/self/exe", filepath.Join(dir, "proc"))
	syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644)
	f.Fuzz(func(t *testing.T, ep string) {
		m, _ := json.Marshal(map[string]string{"runtime": "Shell", "entrypoint": ep})
		if err := os.WriteFile(filepath.Join(dir, catalog.ManifestFile), m, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := catalog.Open(root)
		if err != nil {
			t.Fatal(err)
		}
		tl, err := c.Get("t")
		if err != nil {
			if !errors.Is(err, isolation.ErrInvalidTool) {
				t.Fatalf("entrypoint %q: untyped error %v", ep, err)
			}
			return
		}
		r, err := filepath.Rel(dir, tl.EntrypointPath)
		if err != nil || !filepath.IsLocal(r) {
			t.Fatalf("entrypoint %q resolved to %s, outside %s", ep, tl.EntrypointPath, dir)
		}
		fi, err := os.Lstat(tl.EntrypointPath)
		if err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("entrypoint %q resolved to %s, not a regular file (%v)", ep, tl.EntrypointPath, err)
		}
	})
}

// FuzzSchemaGraph builds schemas from the fuzzer's bytes out of the keywords that make references
// and recursion ($ref by pointer, anchor and $id, $dynamicRef, allOf/anyOf/oneOf/not/if/then/else,
// dependentSchemas, properties, items), so that it explores reference graphs far faster than
// byte mutations of JSON do. The catalog's cycle check must agree with the validator: a schema it
// accepts must validate every input without overflowing the stack (which would crash this
// process, and so fail the fuzz run).
func FuzzSchemaGraph(f *testing.F) {
	f.Add([]byte{0, 0, 0})                   // a $ref to itself
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9}) // a mix
	f.Add([]byte{7, 1, 1, 8, 2, 0, 9, 3, 1, 10, 0, 2})
	f.Add([]byte{0, 7, 0, 0, 0, 0, 0, 0, 8, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9})
	f.Fuzz(func(t *testing.T, prog []byte) {
		if len(prog) > 64 {
			prog = prog[:64]
		}
		const defs = 4
		next := func() int {
			if len(prog) == 0 {
				return 0
			}
			b := int(prog[0])
			prog = prog[1:]
			return b
		}
		ref := func() string {
			k := next() % defs
			// Relative to any base in the document (the root is input_schema.json).
			switch next() % 4 {
			case 0:
				return fmt.Sprintf(`{"$ref":"input_schema.json#/$defs/d%d"}`, k)
			case 1:
				return fmt.Sprintf(`{"$ref":"d%d.json#a%d"}`, k, k)
			case 2:
				return fmt.Sprintf(`{"$ref":"d%d.json"}`, k)
			default:
				return fmt.Sprintf(`{"$dynamicRef":"d%d.json#dyn%d"}`, k, k)
			}
		}
		body := func() string {
			kw := []string{`"title":"t"`}
			for n := next()%3 + 1; n > 0; n-- {
				switch next() % 10 {
				case 0:
					r := ref()
					kw = append(kw, `"allOf":[{"allOf":[`+r+`]}]`)
				case 1:
					kw = append(kw, `"allOf":[`+ref()+`]`)
				case 2:
					kw = append(kw, `"anyOf":[`+ref()+`,{"type":"number"}]`)
				case 3:
					kw = append(kw, `"oneOf":[`+ref()+`,{"type":"string"}]`)
				case 4:
					kw = append(kw, `"not":`+ref())
				case 5:
					kw = append(kw, `"if":`+ref()+`,"then":`+ref()+`,"else":`+ref())
				case 6:
					kw = append(kw, `"dependentSchemas":{"p":`+ref()+`}`)
				case 7:
					kw = append(kw, `"properties":{"p":`+ref()+`}`)
				case 8:
					kw = append(kw, `"items":`+ref())
				default:
					kw = append(kw, `"type":"object"`)
				}
			}
			return strings.Join(kw, ",")
		}
		parts := make([]string, defs)
		for i := range parts {
			parts[i] = fmt.Sprintf(`"d%d":{"$id":"d%d.json","$anchor":"a%d","$dynamicAnchor":"dyn%d",%s}`, i, i, i, i, body())
		}
		schema := `{"$defs":{` + strings.Join(parts, ",") + `},` + body() + `}`
		tl, err := catalog.NewBuiltin("g", catalog.Manifest{Runtime: isolation.RequireNativeTrusted, InputSchema: []byte(schema)})
		if err != nil {
			if !errors.Is(err, isolation.ErrInvalidTool) {
				t.Fatalf("untyped error %v", err)
			}
			if !strings.Contains(err.Error(), "cyclic schema") && !strings.Contains(err.Error(), "properties") {
				t.Fatalf("a generated schema refused for another reason than a cycle: %v\n%s", err, schema)
			}
			return
		}
		for _, in := range []string{`{}`, `{"p":{"p":{"p":1}}}`, `[[[1]]]`, `1`, `"s"`, `{"p":[{"p":[]}]}`} {
			checkValidation(t, tl, []byte(in))
		}
	})
}
