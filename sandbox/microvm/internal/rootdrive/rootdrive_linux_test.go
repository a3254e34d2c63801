package rootdrive

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func needTools(t testing.TB) {
	t.Helper()
	for _, b := range []string{"mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not found (apt-get install e2fsprogs)", b)
		}
	}
}

// tree writes files (path → content; a trailing "/" is a directory, "->" a symlink) under a new
// directory.
func tree(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for p, c := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.HasSuffix(p, "/"):
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
		case strings.HasPrefix(c, "->"):
			if err := os.Symlink(strings.TrimPrefix(c, "->"), full); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

func newCache(t testing.TB, max int64) *Cache {
	t.Helper()
	c, err := New(Config{Dir: filepath.Join(t.TempDir(), "drives"), MaxBytes: max, Recheck: -1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func inode(t testing.TB, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// debugfsLs lists a directory of an ext4 image.
func debugfsLs(t testing.TB, img, dir string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", "ls -l "+dir, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs: %v: %s", err, out)
	}
	return string(out)
}

// A tree becomes a drive once: the same content again (another process, another copy of the
// tree) finds it; changed content gets another. The drive is root's only, holds the tree with
// its symlinks as symlinks, and the guest's mount points.
func TestOpenBuildsOncePerContent(t *testing.T) {
	needTools(t)
	c := newCache(t, -1)
	files := map[string]string{"bin/tool": "#!/bin/sh\n", "etc/abs": "->/etc/shadow", "etc/rel": "->../bin/tool", "tmp/": ""}
	a := tree(t, files)
	ctx := context.Background()
	d1, err := c.Open(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	fi, err := os.Stat(d1.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("drive mode %v, want 0600", fi.Mode().Perm())
	}
	ino := inode(t, d1.Path)
	root := debugfsLs(t, d1.Path, "/")
	for _, want := range []string{"bin", "etc", "tmp", "proc", "dev", "axocoatl"} {
		if !strings.Contains(root, " "+want+"\n") && !strings.Contains(root, " "+want+" ") {
			t.Errorf("drive root lacks %s:\n%s", want, root)
		}
	}
	if strings.Contains(root, "lost+found") {
		t.Errorf("drive has a lost+found the tree lacks:\n%s", root)
	}
	if out, _ := exec.Command("debugfs", "-R", "stat /etc/abs", d1.Path).CombinedOutput(); !strings.Contains(string(out), "Type: symlink") || !strings.Contains(string(out), "/etc/shadow") {
		t.Errorf("/etc/abs is not the symlink to /etc/shadow it was:\n%s", out)
	}

	// A copy of the same tree (another bundle of the same image): the same drive, not rebuilt.
	b := tree(t, files)
	c2, err := New(Config{Dir: c.Dir(), Recheck: -1}) // as another process would
	if err != nil {
		t.Fatal(err)
	}
	d2, err := c2.Open(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if d2.Digest != d1.Digest || inode(t, d2.Path) != ino {
		t.Errorf("same content: digest %s (want %s), drive rebuilt: %v", d2.Digest, d1.Digest, inode(t, d2.Path) != ino)
	}
	// A change of content: another drive.
	if err := os.WriteFile(filepath.Join(b, "bin", "tool"), []byte("#!/bin/sh\necho changed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d3, err := c2.Open(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer d3.Close()
	if d3.Digest == d1.Digest {
		t.Error("changed content kept the old drive")
	}
	// A change of permissions only: another drive too.
	if err := os.Chmod(filepath.Join(a, "bin", "tool"), 0o755); err != nil {
		t.Fatal(err)
	}
	d4, err := c.Open(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer d4.Close()
	if d4.Digest == d1.Digest {
		t.Error("changed permissions kept the old drive")
	}
}

// Over its cap the cache removes the least recently used drives, never one that is held.
func TestGCUnderCap(t *testing.T) {
	needTools(t)
	c := newCache(t, 1) // any drive is over: only the one at hand and held ones stay
	ctx := context.Background()
	var paths []string
	var held *Drive
	for i, content := range []string{"one", "two", "three"} {
		d, err := c.Open(ctx, tree(t, map[string]string{"f": content}))
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, d.Path)
		if i == 0 {
			held = d // held throughout
		} else {
			d.Close()
		}
		time.Sleep(10 * time.Millisecond) // distinct modification times
	}
	defer held.Close()
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if !exists(paths[0]) {
		t.Error("the held drive was removed")
	}
	if exists(paths[1]) {
		t.Error("the least recently used unheld drive survived a build over the cap")
	}
	if !exists(paths[2]) {
		t.Error("the drive just built was removed")
	}
	held.Close()
	if err := c.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if exists(paths[0]) {
		t.Error("a released drive over the cap survived GC")
	}
	if exists(paths[2]) {
		t.Error("an unheld drive over the cap survived GC")
	}
	if metas, _ := os.ReadDir(filepath.Join(c.Dir(), "meta")); len(metas) != 0 {
		t.Errorf("%d index entries left for removed drives", len(metas))
	}
	// A removed drive is built again on its next use.
	d, err := c.Open(ctx, tree(t, map[string]string{"f": "one"}))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
}

// A tree over the bounds is refused as ErrTree, before anything is built.
func TestTreeBounds(t *testing.T) {
	c := newCache(t, -1)
	dir := t.TempDir()
	p := dir
	for i := 0; i <= MaxDepth; i++ {
		p = filepath.Join(p, "d")
	}
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := c.Open(context.Background(), dir)
	if !errors.Is(err, ErrTree) {
		t.Fatalf("err = %v, want ErrTree", err)
	}
	ents, _ := os.ReadDir(c.Dir())
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".ext4") {
			t.Errorf("left %s", e.Name())
		}
	}
}
