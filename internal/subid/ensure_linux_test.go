package subid

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Ensure registers one range, in both files, once, however many callers race; then returns it.
func TestEnsureIdempotentConcurrent(t *testing.T) {
	dir := t.TempDir()
	o := EnsureConfig{User: "axotest", Count: 4 * 65536, Min: 1 << 30, Align: 65536,
		UIDFile: filepath.Join(dir, "subuid"), GIDFile: filepath.Join(dir, "subgid"), LockFile: filepath.Join(dir, "lock")}
	// Somebody else's range sits where ours would go: it must be skipped, and kept.
	if err := os.WriteFile(o.UIDFile, []byte("alice:1073741824:100"), 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	adds := make([]bool, 8)
	uids := make([][]Range, 8)
	for i := range adds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			uids[i], _, adds[i], err = Ensure(o)
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	n := 0
	for i, a := range adds {
		if a {
			n++
		}
		if len(uids[i]) != 1 || uids[i][0] != (Range{1<<30 + 65536, 4 * 65536}) {
			t.Errorf("caller %d got %v", i, uids[i])
		}
	}
	if n != 1 {
		t.Errorf("%d callers registered a range, want 1", n)
	}
	bu, _ := os.ReadFile(o.UIDFile)
	bg, _ := os.ReadFile(o.GIDFile)
	if string(bu) != "alice:1073741824:100\naxotest:1073807360:262144\n" || string(bg) != "axotest:1073807360:262144\n" {
		t.Fatalf("files:\n%s---\n%s", bu, bg)
	}
	if _, _, added, err := Ensure(o); err != nil || added {
		t.Fatalf("second Ensure: added %v, %v", added, err)
	}
}

func TestEnsureRejectsBadUser(t *testing.T) {
	for _, u := range []string{"", "a:b", "a\nb"} {
		if _, _, _, err := Ensure(EnsureConfig{User: u, LockFile: filepath.Join(t.TempDir(), "l")}); err == nil || !strings.Contains(err.Error(), "bad options") {
			t.Errorf("user %q: err %v", u, err)
		}
	}
}
