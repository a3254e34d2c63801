package catalog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEditDuringLoadIsNotCachedStale: the stamp is taken before tool.json is read, so an edit
// landing while a load parses the old content is seen at the next lookup. (Stamping after the
// parse cached the old content under the new file's stamp, for good.)
func TestEditDuringLoadIsNotCachedStale(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "t"), 0o755)
	manifest := filepath.Join(root, "t", ManifestFile)
	if err := os.WriteFile(manifest, []byte(`{"runtime":"NativeTrusted","description":"one"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	edited := false
	testHookManifestRead = func(string) {
		if !edited {
			edited = true
			os.WriteFile(manifest, []byte(`{"runtime":"NativeTrusted","description":"two, edited"}`), 0o644)
		}
	}
	defer func() { testHookManifestRead = nil }()
	if tl, err := c.Get("t"); err != nil || tl.Description != "one" {
		t.Fatalf("first Get = %+v, %v (the load read the version before the edit)", tl, err)
	}
	if tl, err := c.Get("t"); err != nil || tl.Description != "two, edited" {
		t.Fatalf("second Get = %+v, %v: the edit made during the first load was cached stale", tl, err)
	}
}

// TestWorkBudgetScalesWithInput: a large input that a schema does not amplify stays within the
// validation budget (which grows with the input's values), though it exceeds the fixed allowance;
// an amplifying schema does not.
func TestWorkBudgetScalesWithInput(t *testing.T) {
	cs, err := compileSchema("t", []byte(`{"type":"array","items":{"type":"array","uniqueItems":true,"items":{"enum":[1,2,3,{"a":[1]}]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal([]byte("["+strings.TrimSuffix(strings.Repeat(`[1,2,{"a":[1]}],`, 70000), ",")+"]"), &v); err != nil {
		t.Fatal(err)
	}
	v, n := previewable(v)
	if err := cs.graph.cost(v, ValidationWorkAllowance); err == nil {
		t.Fatalf("70,000 triples fit the fixed allowance: the test does not test the scaling")
	}
	if err := cs.graph.cost(v, ValidationWorkAllowance+ValidationWorkPerValue*n); err != nil {
		t.Errorf("70,000 triples (%d values): %v", n, err)
	}
	cs, err = compileSchema("t", []byte(`{"$defs":{"a":{"anyOf":[{"items":{"$ref":"#/$defs/a"}},{"items":{"$ref":"#/$defs/a"}},{"items":{"$ref":"#/$defs/a"}}]}},"$ref":"#/$defs/a"}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte("["+strings.Repeat(`[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]],`, 1000)+"1]"), &v); err != nil {
		t.Fatal(err)
	}
	v, n = previewable(v)
	if err := cs.graph.cost(v, ValidationWorkAllowance+ValidationWorkPerValue*n); err == nil {
		t.Errorf("a schema tripling the work at each level was let through")
	}
}
