package catalog_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
)

// within runs f and fails the test if it does not return within d: the defects these tests cover
// used to hang (a FIFO, an exponential schema), and a hung test says less than a failed one.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %s", what, d)
	}
}

func nativeTool(t *testing.T, schema string) (*catalog.Catalog, string) {
	t.Helper()
	root := t.TempDir()
	write(t, filepath.Join(root, "s/tool.json"), `{"runtime":"NativeTrusted","input_schema":`+schema+`}`)
	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	return c, "s"
}

// TestCyclicSchemasRefused: a schema that applies itself to the same value without consuming
// input made the validator overflow its stack (a fatal error: the whole server exited) at the
// first call. It is refused at load, naming the cycle.
func TestCyclicSchemasRefused(t *testing.T) {
	for name, schema := range map[string]string{
		"self":          `{"$ref":"#"}`,
		"allOf":         `{"allOf":[{"$ref":"#"}]}`,
		"two-step-defs": `{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}`,
		"anyOf-deep":    `{"$defs":{"a":{"anyOf":[{"type":"string"},{"allOf":[{"$ref":"#/$defs/a"}]}]}},"properties":{"x":{"$ref":"#/$defs/a"}}}`,
		"not":           `{"not":{"$ref":"#"}}`,
		"if-then-else":  `{"if":{"type":"object"},"then":{"$ref":"#"},"else":true}`,
		"dependent":     `{"dependentSchemas":{"a":{"$ref":"#"}}}`,
		"anchor":        `{"$defs":{"a":{"$anchor":"x","oneOf":[{"$ref":"#x"}]}},"$ref":"#x"}`,
		"by-id":         `{"$defs":{"a":{"$id":"a.json","$ref":"b.json"},"b":{"$id":"b.json","$ref":"a.json"}},"$ref":"a.json"}`,
		"draft07":       `{"$schema":"http://json-schema.org/draft-07/schema#","definitions":{"a":{"$ref":"#/definitions/a"}},"properties":{"p":{"$ref":"#/definitions/a"}}}`,
		"draft07-deps":  `{"$schema":"http://json-schema.org/draft-07/schema#","dependencies":{"a":{"$ref":"#"}}}`,
		"dynamic":       `{"$dynamicAnchor":"n","anyOf":[{"$dynamicRef":"#n"}]}`,
		// Duplicate keys: encoding/json merges the second allOf into the first one's subschema,
		// {"$ref":"#","type":"string"}, a cycle the JSON text does not show.
		"duplicate-keys": `{"allOf":[{"$ref":"#"}],"allOf":[{"type":"string"}]}`,
		"duplicate-id":   `{"$defs":{"a":{"$id":"x.json","$ref":"x.json"},"b":{"$id":"x.json"}},"$ref":"x.json"}`,
	} {
		t.Run(name, func(t *testing.T) {
			c, tool := nativeTool(t, schema)
			_, err := c.Get(tool)
			want := "cyclic schema"
			if name == "duplicate-id" {
				want = "two subschemas have the $id"
			}
			if !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Get = %v, want ErrInvalidTool naming the cycle", err)
			}
			if _, errs := c.List(); len(errs) != 1 {
				t.Errorf("List errors = %v", errs)
			}
		})
	}
}

// TestRecursiveSchemas: recursion that steps into the value on each round (a tree) is legitimate
// and validates; an input nested too deep for the validator is refused as invalid input instead
// of recursing without bound.
func TestRecursiveSchemas(t *testing.T) {
	c, tool := nativeTool(t, `{"$defs":{"node":{"type":"object","required":["name"],"properties":{"name":{"type":"string"},"children":{"type":"array","items":{"$ref":"#/$defs/node"}}}}},"$ref":"#/$defs/node"}`)
	tl, err := c.Get(tool)
	if err != nil {
		t.Fatal(err)
	}
	nested := func(depth int, leaf string) string {
		return strings.Repeat(`{"name":"n","children":[`, depth) + leaf + strings.Repeat(`]}`, depth)
	}
	if err := tl.ValidateInput([]byte(nested(50, `{"name":"leaf"}`))); err != nil {
		t.Errorf("a 50-level tree: %v", err)
	}
	if err := tl.ValidateInput([]byte(nested(50, `{"name":3}`))); !errors.Is(err, isolation.ErrInvalidInput) {
		t.Errorf("a bad leaf 50 levels down: %v", err)
	}
	err = tl.ValidateInput([]byte(nested(2000, `{"name":"leaf"}`)))
	if !errors.Is(err, isolation.ErrInvalidInput) || !strings.Contains(err.Error(), "too deep") {
		t.Errorf("a 2000-level tree: %v, want ErrInvalidInput (too deep)", err)
	}
}

// TestValidationWorkBounded: a schema whose branches multiply at each level of the input (no cycle,
// each round consumes a level) used to make validation take 2^depth steps; an anyOf of many
// branches printed a large input once per branch in its error.
func TestValidationWorkBounded(t *testing.T) {
	c, tool := nativeTool(t, `{"$defs":{"a":{"anyOf":[{"type":"array","items":{"$ref":"#/$defs/a"}},{"type":"array","items":{"$ref":"#/$defs/a"}},{"type":"number"}]}},"$ref":"#/$defs/a"}`)
	tl, err := c.Get(tool)
	if err != nil {
		t.Fatal(err)
	}
	if err := tl.ValidateInput([]byte(`[[1,2],[3]]`)); err != nil {
		t.Errorf("a small input: %v", err)
	}
	deep := strings.Repeat("[", 40) + `"x"` + strings.Repeat("]", 40)
	within(t, 10*time.Second, "validating 40 levels against a doubling schema", func() {
		err = tl.ValidateInput([]byte(deep))
	})
	if !errors.Is(err, isolation.ErrInvalidInput) || !strings.Contains(err.Error(), "too complex") {
		t.Errorf("doubling schema: %v, want ErrInvalidInput (too complex)", err)
	}

	branches := make([]string, 200)
	for i := range branches {
		branches[i] = fmt.Sprintf(`{"type":"string","title":"b%d"}`, i)
	}
	c, tool = nativeTool(t, `{"anyOf":[`+strings.Join(branches, ",")+`]}`)
	if tl, err = c.Get(tool); err != nil {
		t.Fatal(err)
	}
	big := `{"k":"` + strings.Repeat("x", 1<<20) + `"}`
	err = tl.ValidateInput([]byte(big))
	if !errors.Is(err, isolation.ErrInvalidInput) {
		t.Fatalf("anyOf of strings against an object: %v", err)
	}
	if n := len(err.Error()); n > 8192 {
		t.Errorf("the error is %d bytes: it copies the input", n)
	}
}

func TestCheckInput(t *testing.T) {
	for _, tt := range []struct {
		in, want string
	}{
		{`{"a":1}`, ""},
		{`"é"`, ""},
		{"\"\xff\"", "UTF-8"},
		{"{\"a\":\"\xc3\"}", "UTF-8"},
		{strings.Repeat("[", catalog.MaxInputDepth+1) + strings.Repeat("]", catalog.MaxInputDepth+1), "too deep"},
		{strings.Repeat("[", catalog.MaxInputDepth) + strings.Repeat("]", catalog.MaxInputDepth), ""},
		{`{"a":1} {}`, "single valid JSON"},
		{``, "single valid JSON"},
	} {
		err := catalog.CheckInput("t", []byte(tt.in))
		if tt.want == "" {
			if err != nil {
				t.Errorf("CheckInput(%.20q) = %v", tt.in, err)
			}
			continue
		}
		if !errors.Is(err, isolation.ErrInvalidInput) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CheckInput(%.20q) = %v, want ErrInvalidInput naming %q", tt.in, err, tt.want)
		}
	}
}

// TestSchemaLimits: a schema's nesting and size are bounded at load.
func TestSchemaLimits(t *testing.T) {
	deep := strings.Repeat(`{"items":`, catalog.MaxSchemaDepth+1) + `{}` + strings.Repeat(`}`, catalog.MaxSchemaDepth+1)
	c, tool := nativeTool(t, deep)
	if _, err := c.Get(tool); !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), "deep") {
		t.Errorf("a %d-level schema: %v", catalog.MaxSchemaDepth+1, err)
	}
	props := make([]string, catalog.MaxSchemaNodes+1)
	for i := range props {
		props[i] = fmt.Sprintf(`"p%d":{}`, i)
	}
	c, tool = nativeTool(t, `{"properties":{`+strings.Join(props, ",")+`}}`)
	if _, err := c.Get(tool); !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), "subschemas") {
		t.Errorf("a schema of %d subschemas: %v", len(props), err)
	}
	// Bounded before the validator parses it (its parse is the slow part).
	c, tool = nativeTool(t, `{"enum":[`+strings.TrimSuffix(strings.Repeat(`{},`, 4*catalog.MaxSchemaNodes+1), ",")+`]}`)
	if _, err := c.Get(tool); !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), "JSON objects") {
		t.Errorf("a schema of %d objects: %v", 4*catalog.MaxSchemaNodes+1, err)
	}
}

// TestHostileManifestFiles: tool.json must be a regular file inside the folder and at most
// MaxManifestBytes; a FIFO used to hang every listing, /dev/zero to exhaust memory. One such
// folder never hides the others.
func TestHostileManifestFiles(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "good/tool.json"), `{"runtime":"NativeTrusted"}`)
	os.MkdirAll(filepath.Join(root, "fifo"), 0o755)
	if err := syscall.Mkfifo(filepath.Join(root, "fifo/tool.json"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	os.MkdirAll(filepath.Join(root, "zero"), 0o755)
	os.Symlink("/dev/zero", filepath.Join(root, "zero/tool.json"))
	write(t, filepath.Join(root, "big/tool.json"), `{"runtime":"NativeTrusted","description":"`+strings.Repeat("x", catalog.MaxManifestBytes)+`"}`)
	write(t, filepath.Join(root, "outside.json"), `{"runtime":"NativeTrusted"}`)
	os.MkdirAll(filepath.Join(root, "up"), 0o755)
	os.Symlink("../outside.json", filepath.Join(root, "up/tool.json"))
	os.MkdirAll(filepath.Join(root, "dir/tool.json"), 0o755)
	os.MkdirAll(filepath.Join(root, "infifo"), 0o755)
	syscall.Mkfifo(filepath.Join(root, "infifo/real.json"), 0o644)
	os.Symlink("real.json", filepath.Join(root, "infifo/tool.json"))

	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"fifo": "not a regular file", "zero": "escapes", "big": "over the limit", "up": "escapes",
		"dir": "not a regular file", "infifo": "not a regular file",
	} {
		within(t, 5*time.Second, "Get("+name+")", func() { _, err = c.Get(name) })
		if !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), want) {
			t.Errorf("Get(%q) = %v, want ErrInvalidTool containing %q", name, err, want)
		}
	}
	var tools []*catalog.Tool
	var errs []error
	within(t, 5*time.Second, "List", func() { tools, errs = c.List() })
	if len(tools) != 1 || tools[0].Name != "good" || len(errs) != 6 {
		t.Errorf("List = %v, %v; want [good] and 6 errors", tools, errs)
	}
}

// TestToolFolderConfinement: a tool folder that is a symlink out of the tools root is refused; one
// to another folder inside the root loads with Dir resolved, so later users of Dir do not follow
// the symlink again. Entrypoints resolve inside the folder to regular files.
func TestToolFolderConfinement(t *testing.T) {
	outside := t.TempDir()
	write(t, filepath.Join(outside, "evil/tool.json"), `{"runtime":"Shell","entrypoint":"run.sh"}`)
	write(t, filepath.Join(outside, "evil/run.sh"), "cat /etc/shadow")
	root := t.TempDir()
	os.Symlink(filepath.Join(outside, "evil"), filepath.Join(root, "evil"))
	os.Symlink("../"+filepath.Base(outside)+"/evil", filepath.Join(root, "evil2"))
	write(t, filepath.Join(root, "real/tool.json"), `{"runtime":"Shell","entrypoint":"bin/run.sh"}`)
	write(t, filepath.Join(root, "real/src/run.sh"), "echo ok")
	os.Symlink("src", filepath.Join(root, "real/bin"))
	os.Symlink("real", filepath.Join(root, "alias"))
	write(t, filepath.Join(root, "pipe/tool.json"), `{"runtime":"Shell","entrypoint":"run.sh"}`)
	syscall.Mkfifo(filepath.Join(root, "pipe/run.sh"), 0o755)
	write(t, filepath.Join(root, "adir/tool.json"), `{"runtime":"Shell","entrypoint":"sub"}`)
	os.MkdirAll(filepath.Join(root, "adir/sub"), 0o755)
	write(t, filepath.Join(root, "notes.txt"), "not a tool")
	os.Symlink("notes.txt", filepath.Join(root, "notes"))
	os.Symlink("/nonexistent", filepath.Join(root, "dangling"))

	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"evil", "evil2", "pipe", "adir"} {
		within(t, 5*time.Second, "Get("+name+")", func() { _, err = c.Get(name) })
		if !errors.Is(err, isolation.ErrInvalidTool) {
			t.Errorf("Get(%q) = %v, want ErrInvalidTool", name, err)
		}
	}
	if _, err := c.Get("notes"); !errors.Is(err, isolation.ErrToolNotFound) {
		t.Errorf("Get(notes), a symlink to a file: %v, want ErrToolNotFound", err)
	}
	if _, err := c.Get("dangling"); !errors.Is(err, isolation.ErrInvalidTool) {
		t.Errorf("Get(dangling), a symlink out of the root: %v, want ErrInvalidTool", err)
	}
	for _, name := range []string{"real", "alias"} {
		tl, err := c.Get(name)
		if err != nil {
			t.Fatalf("Get(%q): %v", name, err)
		}
		if tl.Dir != filepath.Join(root, "real") || tl.EntrypointPath != filepath.Join(root, "real/src/run.sh") {
			t.Errorf("Get(%q): Dir %s, EntrypointPath %s; want them resolved", name, tl.Dir, tl.EntrypointPath)
		}
	}
}

// TestBrokenManifestsAreTyped: every broken manifest is isolation.ErrInvalidTool naming what is
// wrong, including trailing data after the object and limits out of range (17592186044416 MB
// once wrapped to 0, no limit).
func TestBrokenManifestsAreTyped(t *testing.T) {
	for _, tt := range []struct{ manifest, want string }{
		{`{"runtime":"Java"}`, "unknown runtime"},
		{`{"entrypoint":"x"}`, `"runtime" is required`},
		{`{"runtime":"NativeTrusted","timeout_ms":"1"}`, "timeout_ms"},
		{`{"runtime":"NativeTrusted"} {"runtime":"Shell"}`, "trailing data"},
		{`{"runtime":"NativeTrusted"}x`, "trailing data"},
		{`{"runtime":"NativeTrusted","memory_mb":17592186044416}`, "memory_mb 17592186044416 is out of range: 1..1048576"},
		{`{"runtime":"NativeTrusted","memory_mb":-1}`, "memory_mb"},
		{`{"runtime":"NativeTrusted","timeout_ms":86400001}`, "timeout_ms 86400001 is out of range: 1..86400000"},
		{`{"runtime":"NativeTrusted","timeout_ms":-5}`, "timeout_ms"},
		{`{"runtime":"Shell","entrypoint":"../x"}`, "inside the tool folder"},
		{`{"runtime":"Shell","entrypoint":"/bin/sh"}`, "inside the tool folder"},
		{`{"runtime":"Shell"}`, "needs an \"entrypoint\""},
		{`{"runtime":"ContainerImage"}`, "config.json and rootfs/"},
		{`{"runtime":"NativeTrusted","input_schema":{"type":5}}`, "input_schema"},
		{`[]`, "tool.json"},
		{``, "tool.json"},
	} {
		root := t.TempDir()
		write(t, filepath.Join(root, "t/tool.json"), tt.manifest)
		c, _ := catalog.Open(root)
		_, err := c.Get("t")
		if !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want ErrInvalidTool containing %q", tt.manifest, err, tt.want)
		}
	}
	root := t.TempDir()
	write(t, filepath.Join(root, "t/tool.json"), `{"runtime":"NativeTrusted","memory_mb":1048576,"timeout_ms":86400000}`+"\n\t ")
	c, _ := catalog.Open(root)
	if tl, err := c.Get("t"); err != nil || tl.MemoryMB != catalog.MaxMemoryMB {
		t.Errorf("limits at their maximum, trailing whitespace: %+v %v", tl, err)
	}
}

// TestValidationSemanticsKept: the instance the validator sees prints short, but compares as
// before (enum, const and uniqueItems over objects and arrays).
func TestValidationSemanticsKept(t *testing.T) {
	c, tool := nativeTool(t, `{"type":"object","properties":{
		"e":{"enum":[{"a":[1,2]},[3,{"b":null}]]},
		"c":{"const":{"x":{"y":[true]}}},
		"u":{"type":"array","uniqueItems":true},
		"m":{"type":"object","minProperties":2,"propertyNames":{"maxLength":2}}}}`)
	tl, err := c.Get(tool)
	if err != nil {
		t.Fatal(err)
	}
	for in, ok := range map[string]bool{
		`{"e":{"a":[1,2]}}`: true, `{"e":[3,{"b":null}]}`: true, `{"e":{"a":[2,1]}}`: false,
		`{"c":{"x":{"y":[true]}}}`: true, `{"c":{"x":{"y":[false]}}}`: false,
		`{"u":[[1],{"a":1},[2]]}`: true, `{"u":[{"a":[1]},{"a":[1]}]}`: false,
		`{"m":{"ab":1,"cd":2}}`: true, `{"m":{"ab":1}}`: false, `{"m":{"abc":1,"d":2}}`: false,
	} {
		err := tl.ValidateInput([]byte(in))
		if ok != (err == nil) {
			t.Errorf("%s: %v, want ok=%v", in, err, ok)
		}
	}
}

// TestLargeLegitInputs: the bounds are not tripped by inputs that are merely large: many unique
// pairs, many enum members.
func TestLargeLegitInputs(t *testing.T) {
	c, tool := nativeTool(t, `{"type":"array","items":{"type":"array","uniqueItems":true,"items":{"enum":[1,2,3,{"a":[1]}]}}}`)
	tl, err := c.Get(tool)
	if err != nil {
		t.Fatal(err)
	}
	in := "[" + strings.TrimSuffix(strings.Repeat(`[1,2,{"a":[1]}],`, 5000), ",") + "]"
	if err := tl.ValidateInput([]byte(in)); err != nil {
		t.Errorf("5,000 unique triples: %v", err)
	}
	c, tool = nativeTool(t, `{"type":"array","uniqueItems":true}`)
	if tl, err = c.Get(tool); err != nil {
		t.Fatal(err)
	}
	in = "[" + strings.TrimSuffix(strings.Repeat(`{"a":[[[1]]]},`, 10), ",") + "]"
	if err := tl.ValidateInput([]byte(in)); !errors.Is(err, isolation.ErrInvalidInput) || strings.Contains(err.Error(), "too complex") {
		t.Errorf("duplicate items: %v, want a uniqueItems failure", err)
	}
}
