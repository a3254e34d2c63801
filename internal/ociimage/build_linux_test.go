package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ent is one tar entry of a test layer.
type ent struct {
	name  string
	typ   byte
	mode  int64
	data  []byte
	link  string
	uid   int
	gid   int
	mtime time.Time
	major int64
	minor int64
}

var t0 = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func dir(n string, mode int64) ent { return ent{name: n, typ: tar.TypeDir, mode: mode} }
func reg(n string, mode int64, d []byte) ent {
	return ent{name: n, typ: tar.TypeReg, mode: mode, data: d}
}
func sym(n, target string) ent       { return ent{name: n, typ: tar.TypeSymlink, mode: 0o777, link: target} }
func hard(n, target string) ent      { return ent{name: n, typ: tar.TypeLink, link: target} }
func whiteout(n string) ent          { return ent{name: n, typ: tar.TypeReg, mode: 0o600} }
func randBytes(n int) []byte         { b := make([]byte, n); _, _ = rand.Read(b); return b }
func (e ent) owned(uid, gid int) ent { e.uid, e.gid = uid, gid; return e }

func tarBytes(t testing.TB, ents []ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i, e := range ents {
		mt := e.mtime
		if mt.IsZero() {
			mt = t0.Add(time.Duration(i) * time.Minute)
		}
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Linkname: e.link, Uid: e.uid, Gid: e.gid,
			ModTime: mt, Size: int64(len(e.data)), Devmajor: e.major, Devminor: e.minor, Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func layerOf(t testing.TB, ents []ent) v1.Layer {
	t.Helper()
	b := tarBytes(t, ents)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// imageOf makes an OCI image (OCI media types, so umoci reads it) from layers and a config.
func imageOf(t testing.TB, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", runtime.GOARCH, cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

var (
	passwd = []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
	group  = []byte("root:x:0:\napp:x:1000:\nextra:x:2000:app\nother:x:3000:\n")
)

// testImage has the cases an unpacker must get right: modes with set-id bits, owners, relative
// and absolute symlinks, hard links, a FIFO, a device node, a whiteout of a file and of a
// directory, an opaque directory with a same-layer entry before its marker, a file replaced by a
// directory, a write through an in-rootfs symlink, and a go-containerregistry random layer.
func testImage(t testing.TB) v1.Image {
	t.Helper()
	base := []ent{
		dir("./", 0o755),
		dir("etc/", 0o755), reg("etc/passwd", 0o644, passwd), reg("etc/group", 0o644, group),
		reg("etc/thing", 0o644, []byte("was a file")),
		dir("usr/", 0o755), dir("usr/bin/", 0o755), dir("usr/lib/", 0o755),
		reg("usr/bin/tool", 0o755, randBytes(4096)),
		hard("usr/bin/tool-hard", "usr/bin/tool"),
		reg("usr/bin/suid", 0o4755, randBytes(100)),
		reg("usr/bin/sgid", 0o2711, randBytes(10)),
		sym("lib", "usr/lib"),
		dir("bin/", 0o755), sym("bin/sh", "../usr/bin/tool"), sym("abs", "/usr/bin/tool"), sym("dangling", "nowhere/x"),
		dir("data/", 0o750).owned(1000, 1000), dir("data/keep/", 0o700).owned(1000, 2000),
		reg("data/keep/a", 0o640, []byte("old a")).owned(1000, 1000),
		reg("data/keep/b", 0o600, randBytes(70000)).owned(1000, 1000),
		reg("data/empty", 0o644, nil),
		{name: "data/fifo", typ: tar.TypeFifo, mode: 0o620},
		dir("opq/", 0o755), reg("opq/old1", 0o644, []byte("1")), dir("opq/sub/", 0o755), reg("opq/sub/old2", 0o644, []byte("2")),
		dir("gone/", 0o755), reg("gone/f", 0o644, []byte("f")), reg("rmfile", 0o644, []byte("rm")),
		dir("tmp/", 0o1777),
		dir("ro/", 0o555), reg("ro/file", 0o444, []byte("read-only")), dir("ro/sub/", 0o500), reg("ro/sub/f", 0o400, nil),
		dir("home/", 0o755), dir("home/app/", 0o700).owned(1000, 1000),
	}
	if os.Geteuid() == 0 {
		base = append(base, dir("dev/", 0o755), ent{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3})
	}
	upper := []ent{
		dir("opq/", 0o711),
		reg("opq/new", 0o644, []byte("same layer, before the marker")),
		whiteout("opq/.wh..wh..opq"),
		dir("opq/sub/", 0o755),
		reg("opq/sub/new2", 0o644, []byte("new2")),
		whiteout(".wh.gone"), whiteout(".wh.rmfile"),
		dir("etc/thing/", 0o755), reg("etc/thing/inside", 0o644, []byte("now a dir")),
		reg("data/keep/a", 0o644, []byte("new a")).owned(1000, 1000),
		reg("lib/libx.so", 0o755, randBytes(300)),
		sym("usr/bin/tool-sym", "tool"),
		hard("data/keep/b-link", "data/keep/b"),
	}
	rl, err := random.Layer(2048, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	cfg := v1.Config{
		Entrypoint: []string{"/usr/bin/tool"}, Cmd: []string{"--flag", "x"},
		Env: []string{"FOO=bar"}, WorkingDir: "data", User: "app:extra",
		Labels: map[string]string{"org.example.tool": "yes"},
	}
	return imageOf(t, cfg, layerOf(t, base), layerOf(t, upper), rl)
}

// startRegistry serves go-containerregistry's in-memory registry on 127.0.0.1.
func startRegistry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

func pushImage(t testing.TB, host, repo string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push: %v", err)
	}
	return "docker://" + host + "/" + repo
}

func writeLayout(t testing.TB, dir, refName string, img v1.Image) string {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{refNameAnnotation: refName})); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir + ":" + refName
}

func writeArchive(t testing.TB, file, tag string, img v1.Image) string {
	t.Helper()
	tg, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(file, tg, img); err != nil {
		t.Fatal(err)
	}
	return "docker-archive:" + file + ":" + tag
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// node is what a rootfs comparison looks at, per path.
type node struct {
	Type  string
	Mode  fs.FileMode
	Size  int64
	SHA   string
	Link  string
	UID   uint32
	GID   uint32
	Mtime int64
	Dev   uint64
	// HardGroup is the first path (sorted) sharing this node's inode, for regular files.
	HardGroup string
}

func (n node) String() string {
	return fmt.Sprintf("%s %v size=%d sha=%.12s link=%q owner=%d:%d mtime=%d dev=%d hard=%q",
		n.Type, n.Mode, n.Size, n.SHA, n.Link, n.UID, n.GID, n.Mtime, n.Dev, n.HardGroup)
}

// snapshot walks a rootfs without following symlinks.
func snapshot(t testing.TB, root string) map[string]node {
	t.Helper()
	out := map[string]node{}
	inodes := map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		n := node{Mode: fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), UID: st.Uid, GID: st.Gid,
			Mtime: st.Mtim.Nano()}
		switch {
		case fi.Mode().IsRegular():
			n.Type, n.Size = "file", fi.Size()
			b, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrPermission) && os.Geteuid() != 0 {
				// Unprivileged, a file the image made unreadable (mode 0) is still ours to chmod.
				if err = os.Chmod(p, 0o400); err == nil {
					b, err = os.ReadFile(p)
					_ = os.Chmod(p, fi.Mode().Perm())
				}
			}
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			n.SHA = hex.EncodeToString(sum[:])
			inodes[st.Ino] = append(inodes[st.Ino], rel)
		case fi.IsDir():
			n.Type = "dir"
		case fi.Mode()&fs.ModeSymlink != 0:
			n.Type, n.Mode = "symlink", 0
			n.Link, err = os.Readlink(p)
			if err != nil {
				return err
			}
		case fi.Mode()&fs.ModeNamedPipe != 0:
			n.Type = "fifo"
		case fi.Mode()&fs.ModeDevice != 0:
			n.Type, n.Dev = "device", st.Rdev
		default:
			n.Type = "other"
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, paths := range inodes {
		sort.Strings(paths)
		for _, p := range paths {
			n := out[p]
			n.HardGroup = paths[0]
			out[p] = n
		}
	}
	return out
}

// diffTrees reports differences; ignoreMtime skips mtimes of paths matching it.
func diffTrees(a, b map[string]node, ignoreMtime func(string) bool) []string {
	var diffs []string
	for p, na := range a {
		nb, ok := b[p]
		if !ok {
			diffs = append(diffs, "only in first: "+p)
			continue
		}
		if ignoreMtime != nil && ignoreMtime(p) {
			na.Mtime, nb.Mtime = 0, 0
		}
		if na != nb {
			diffs = append(diffs, fmt.Sprintf("%s:\n\t%v\n\t%v", p, na, nb))
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			diffs = append(diffs, "only in second: "+p)
		}
	}
	sort.Strings(diffs)
	return diffs
}

func readSpec(t testing.TB, bundle string) specs.Spec {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// leftovers lists what is in dir besides the names in keep.
func leftovers(t testing.TB, dir string, keep ...string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		found := false
		for _, k := range keep {
			found = found || e.Name() == k
		}
		if !found {
			out = append(out, e.Name())
		}
	}
	return out
}

// tempDir is t.TempDir that can also be removed unprivileged after a bundle with read-only
// directories was built in it.
func tempDir(t testing.TB) string {
	d := t.TempDir()
	t.Cleanup(func() { _ = removeAll(d) })
	return d
}
