package catalog

import (
	"os"
	"path/filepath"
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
