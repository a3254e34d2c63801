package ociimage

import (
	"archive/tar"
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// layerFromSpec builds a layer tar from the fuzzer's bytes: entries separated by 0x00, each a
// type selector byte, then a name and a link target separated by 0x01, then (for regular
// files) the rest after 0x02 as content. Names are kept as the fuzzer made them: "..", absolute
// paths, whiteouts and long runs of symlinks are the point.
func layerFromSpec(spec []byte) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range bytes.Split(spec, []byte{0}) {
		if len(e) == 0 {
			continue
		}
		sel, rest := e[0], e[1:]
		var content []byte
		if i := bytes.IndexByte(rest, 2); i >= 0 {
			rest, content = rest[:i], rest[i+1:]
		}
		name, link, _ := bytes.Cut(rest, []byte{1})
		h := &tar.Header{Name: string(name), Linkname: string(link), Mode: 0o644 | int64(sel&0x7)<<6}
		switch sel % 6 {
		case 0:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(content))
		case 1:
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case 2:
			h.Typeflag = tar.TypeSymlink
		case 3:
			h.Typeflag = tar.TypeLink
		case 4:
			h.Typeflag, h.Name = tar.TypeReg, filepath.Join(filepath.Dir(string(name)), ".wh."+filepath.Base(string(name)))
		case 5:
			h.Typeflag, h.Name = tar.TypeReg, filepath.Join(string(name), ".wh..wh..opq")
		}
		if tw.WriteHeader(h) != nil {
			continue
		}
		if h.Typeflag == tar.TypeReg && h.Size > 0 {
			_, _ = tw.Write(content)
		}
	}
	_ = tw.Close()
	return buf.Bytes()
}

// FuzzLayer applies layers (the first built from the fuzzer's bytes by layerFromSpec, the second
// the bytes as a raw tar) to a rootfs beside a canary: whatever a layer holds, it errs or it
// writes inside the rootfs only: the canary keeps its content and its single link, and the
// rootfs's parent holds nothing else.
func FuzzLayer(f *testing.F) {
	f.Add([]byte("\x01etc\x00\x00etc/passwd\x02root:x:0:0\x00\x02escape\x01../../canary\x00\x00escape/x\x02pwned"))
	f.Add([]byte("\x02a\x01/\x00\x00a/etc/x\x02y\x00\x03h\x01../canary\x00\x04etc/passwd\x00\x05etc"))
	f.Add([]byte("\x00../canary\x02overwritten\x00\x00/abs\x02z\x00\x02l\x01l\x00\x00l/x\x02loop"))
	f.Fuzz(func(t *testing.T, spec []byte) {
		parent := t.TempDir()
		rootfs := filepath.Join(parent, "rootfs")
		canary := filepath.Join(parent, "canary")
		if err := os.Mkdir(rootfs, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(canary, []byte("canary"), 0o644); err != nil {
			t.Fatal(err)
		}
		u, err := newUnpacker(rootfs, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		for _, layer := range [][]byte{layerFromSpec(spec), spec} {
			_ = u.layer(context.Background(), bytes.NewReader(layer))
		}
		_ = u.finish()
		u.Close()
		if b, err := os.ReadFile(canary); err != nil || string(b) != "canary" {
			t.Fatalf("the canary beside the rootfs changed: %q %v", b, err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(canary, &st); err != nil || st.Nlink != 1 {
			t.Fatalf("the canary gained links (%d): a hard link left the rootfs", st.Nlink)
		}
		ents, _ := os.ReadDir(parent)
		if len(ents) != 2 {
			names := []string{}
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Fatalf("the rootfs's parent holds %v, want only rootfs and canary", names)
		}
		// Make the tree removable whatever modes the layer set (TempDir's cleanup).
		_ = filepath.Walk(rootfs, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.IsDir() && fi.Mode()&os.ModeSymlink == 0 {
				_ = os.Chmod(p, 0o755)
			}
			return nil
		})
	})
}
