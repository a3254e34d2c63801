package bundle

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// OpenBeneath and its fallback walk refuse symlinks anywhere in the path and paths leaving the
// folder, and open plain paths (no root needed).
func TestOpenBeneath(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	for _, d := range []string{"a/b", "real"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "a", "b", "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{{outside, "out"}, {"real", "in"}, {"a/b/f", "flink"}} {
		if err := os.Symlink(l[0], filepath.Join(dir, l[1])); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		rel string
		ok  bool
	}{
		{"a/b/f", true}, {"a/b", true}, {"real", true},
		{"out", false}, {"in", false}, {"flink", false}, {"out/x", false}, {"in/x", false},
		{"../x", false}, {"/etc/passwd", false}, {"a/../../x", false},
	}
	dfd, err := syscall.Open(dir, unix.O_PATH|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(dfd)
	for _, tc := range cases {
		f, err := OpenBeneath(dir, tc.rel, syscall.O_RDONLY)
		if (err == nil) != tc.ok {
			t.Errorf("OpenBeneath %q: err %v, want ok=%v", tc.rel, err, tc.ok)
		}
		if f != nil {
			f.Close()
		}
		rel := filepath.Clean(tc.rel)
		if !filepath.IsLocal(rel) {
			continue // OpenBeneath refuses these before any walk
		}
		fd, err := walkBeneath(dfd, rel, syscall.O_RDONLY|syscall.O_NOFOLLOW)
		if (err == nil) != tc.ok {
			t.Errorf("walkBeneath %q: err %v, want ok=%v", tc.rel, err, tc.ok)
		}
		if err == nil {
			syscall.Close(fd)
		}
	}
}
