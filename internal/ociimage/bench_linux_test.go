package ociimage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BenchmarkBuild builds a bundle from an OCI layout of testImage plus busybox (if present) and,
// for comparison, runs `umoci unpack` on the same layout.
//
//	go test -run X -bench Build -benchtime 20x ./internal/ociimage/
func BenchmarkBuild(b *testing.B) {
	tmp := tempDir(b)
	layers := []v1.Layer{}
	if bb, err := os.ReadFile("/bin/busybox"); err == nil {
		layers = append(layers, layerOf(b, []ent{dir("bin/", 0o755), reg("bin/busybox", 0o755, bb)}))
	}
	img := testImage(b)
	ls, _ := img.Layers()
	img = imageOf(b, v1.Config{Cmd: []string{"/bin/busybox"}}, append(layers, ls...)...)
	layoutDir := filepath.Join(tmp, "layout")
	ref := writeLayout(b, layoutDir, "v1", img)
	b.Run("ociimage", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			dest := filepath.Join(tmp, fmt.Sprintf("ours-%d", i))
			if err := Build(context.Background(), ref, dest, Config{Logger: quietLogger()}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			_ = removeAll(dest)
			b.StartTimer()
		}
	})
	umoci, err := exec.LookPath("umoci")
	if err != nil || os.Geteuid() != 0 {
		return
	}
	b.Run("umoci", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			dest := filepath.Join(tmp, fmt.Sprintf("umoci-%d", i))
			if out, err := exec.Command(umoci, "unpack", "--image", layoutDir+":v1", dest).CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
			b.StopTimer()
			_ = removeAll(dest)
			b.StartTimer()
		}
	})
}
