package tarball

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeTree(t testing.TB, dir string) {
	t.Helper()
	for name, body := range map[string]string{"tool.json": `{"runtime":"Shell","entrypoint":"run.sh"}`, "run.sh": "echo hi", "lib/a.txt": "a", "rootfs/bin/x": "x"} {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "run.sh"), 0o755)
	os.Symlink("a.txt", filepath.Join(dir, "lib", "b.txt"))
	os.Symlink("/proc/self/mounts", filepath.Join(dir, "rootfs", "mtab"))
}

// TestDeterministicAndRoundTrip: the digest depends on content, names and modes, not on mtimes
// or owners; an unpacked folder has the same digest and no write bit.
func TestDeterministicAndRoundTrip(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	writeTree(t, a)
	writeTree(t, b)
	old := time.Unix(1e9, 0)
	os.Chtimes(filepath.Join(b, "run.sh"), old, old)
	da, _, err := Digest(a, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	db, _, err := Digest(b, Limits{})
	if err != nil || da != db {
		t.Fatalf("digests %s %s %v: want equal", da, db, err)
	}
	os.WriteFile(filepath.Join(b, "lib/a.txt"), []byte("A"), 0o644)
	if dc, _, _ := Digest(b, Limits{}); dc == da {
		t.Fatal("a changed file kept the digest")
	}
	var buf bytes.Buffer
	if err := Write(&buf, a, Limits{}); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(t.TempDir(), "x")
	if err := Extract(bytes.NewReader(buf.Bytes()), dest, Limits{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { RemoveAll(dest) })
	if dd, _, err := Digest(dest, Limits{}); err != nil || dd != da {
		t.Fatalf("unpacked digest %s %v, want %s", dd, err, da)
	}
	filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode()&os.ModeSymlink == 0 && fi.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s is writable: %v", p, fi.Mode())
		}
		return nil
	})
	if fi, err := os.Stat(filepath.Join(dest, "run.sh")); err != nil || fi.Mode().Perm() != 0o555 {
		t.Errorf("run.sh mode %v %v, want r-x", fi.Mode(), err)
	}
}

type entry struct {
	name, link string
	typ        byte
	body       string
	mode       int64
}

func tarOf(t testing.TB, es ...entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: 0o644, Size: int64(len(e.body))}
		if e.mode != 0 {
			h.Mode = e.mode
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return buf.Bytes()
}

// TestExtractRefuses: every way out of the folder, and every bound.
func TestExtractRefuses(t *testing.T) {
	outside := t.TempDir()
	for _, c := range []struct {
		name string
		tar  []byte
		lim  Limits
	}{
		{"dotdot", tarOf(t, entry{name: "../x", typ: tar.TypeReg, body: "x"}), Limits{}},
		{"inner dotdot", tarOf(t, entry{name: "a/../../x", typ: tar.TypeReg, body: "x"}), Limits{}},
		{"absolute", tarOf(t, entry{name: filepath.Join(outside, "x"), typ: tar.TypeReg, body: "x"}), Limits{}},
		{"hard link", tarOf(t, entry{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}), Limits{}},
		{"symlink out", tarOf(t, entry{name: "s", typ: tar.TypeSymlink, link: "../../etc"}), Limits{}},
		{"absolute symlink outside rootfs", tarOf(t, entry{name: "s", typ: tar.TypeSymlink, link: "/etc/shadow"}), Limits{}},
		{"write through a symlink", tarOf(t, entry{name: "rootfs/s", typ: tar.TypeSymlink, link: outside}, entry{name: "rootfs/s/x", typ: tar.TypeReg, body: "x"}), Limits{}},
		{"device", tarOf(t, entry{name: "d", typ: tar.TypeChar}), Limits{}},
		{"fifo", tarOf(t, entry{name: "f", typ: tar.TypeFifo}), Limits{}},
		{"duplicate", tarOf(t, entry{name: "a", typ: tar.TypeReg, body: "1"}, entry{name: "a", typ: tar.TypeReg, body: "2"}), Limits{}},
		{"too big", tarOf(t, entry{name: "a", typ: tar.TypeReg, body: "0123456789"}), Limits{MaxBytes: 5}},
		{"too many", tarOf(t, entry{name: "a", typ: tar.TypeReg}, entry{name: "b", typ: tar.TypeReg}), Limits{MaxEntries: 1}},
		{"too deep", tarOf(t, entry{name: "a/b/c/d", typ: tar.TypeReg}), Limits{MaxDepth: 3}},
		{"not a tar", []byte(strings.Repeat("x", 1024)), Limits{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "x")
			err := Extract(bytes.NewReader(c.tar), dest, c.lim)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err %v, want ErrInvalid", err)
			}
			if _, err := os.Stat(dest); !os.IsNotExist(err) {
				t.Errorf("dest left behind: %v", err)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Fatalf("wrote outside: %v", ents)
			}
		})
	}
}

// FuzzExtract: an arbitrary tar never writes outside dest, never panics, and what it accepts
// is read-only.
func FuzzExtract(f *testing.F) {
	f.Add(tarOf(f, entry{name: "a", typ: tar.TypeReg, body: "x"}, entry{name: "d/", typ: tar.TypeDir, mode: 0o755}, entry{name: "d/l", typ: tar.TypeSymlink, link: "../a"}))
	f.Add(tarOf(f, entry{name: "../a", typ: tar.TypeReg, body: "x"}))
	f.Add(tarOf(f, entry{name: "rootfs/l", typ: tar.TypeSymlink, link: "/"}, entry{name: "rootfs/l/x", typ: tar.TypeReg}))
	f.Fuzz(func(t *testing.T, b []byte) {
		parent := t.TempDir()
		dest := filepath.Join(parent, "x")
		err := Extract(bytes.NewReader(b), dest, Limits{MaxBytes: 1 << 20, MaxEntries: 256})
		defer RemoveAll(dest)
		ents, _ := os.ReadDir(parent)
		if err != nil {
			if len(ents) != 0 {
				t.Fatalf("failed extract left %v", ents)
			}
			return
		}
		if len(ents) != 1 {
			t.Fatalf("entries beside dest: %v", ents)
		}
	})
}
