// Package wasmbuild compiles Go packages to WebAssembly modules (GOOS=wasip1 GOARCH=wasm) with the
// host's go command. Tests use it to build guest modules from source; the examples build uses it
// to compile the example tools.
package wasmbuild

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// Config tunes one build.
type Config struct {
	// Ldflags is passed to go build -ldflags (for example "-X main.version=2").
	Ldflags string
	// BuildMode is passed to go build -buildmode ("" for a command, "c-shared" for a reactor).
	BuildMode string
}

// GoCommand returns the go command to use: $(GOROOT)/bin/go of the running toolchain when it
// exists, else "go" from PATH.
func GoCommand() string {
	//lint:ignore SA1019 the toolchain that built this program builds its Wasm tools, when it is still there
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
		return p
	}
	return "go"
}

// Build compiles the Go main package in pkgDir (its non-test .go files) to the module out,
// written atomically.
func Build(ctx context.Context, pkgDir, out string, opts Config) error {
	abs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return err
	}
	tmp := abs + ".tmp" + fmt.Sprint(os.Getpid())
	args := []string{"build", "-trimpath", "-o", tmp}
	if opts.BuildMode != "" {
		args = append(args, "-buildmode="+opts.BuildMode)
	}
	if opts.Ldflags != "" {
		args = append(args, "-ldflags="+opts.Ldflags)
	}
	// Naming the files (not ".") also builds a folder outside any module (std-only imports), as
	// a copied tools root is.
	files, err := filepath.Glob(filepath.Join(pkgDir, "*.go"))
	if err != nil {
		return err
	}
	n := 0
	for _, f := range files {
		if !strings.HasSuffix(f, "_test.go") {
			args = append(args, filepath.Base(f))
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("wasmbuild: no Go files in %s", pkgDir)
	}
	cmd := exec.CommandContext(ctx, GoCommand(), args...)
	cmd.Dir = pkgDir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("wasmbuild: go build %s: %w\n%s", pkgDir, err, strings.TrimSpace(stderr.String()))
	}
	return os.Rename(tmp, abs)
}

// SourceHash hashes every file of the package in pkgDir that can change the build (Go files,
// go.mod, go.sum, embedded assets: every regular file, not recursing), with the options and the
// toolchain version.
func SourceHash(pkgDir string, opts Config) (string, error) {
	ents, err := os.ReadDir(pkgDir)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasSuffix(e.Name(), ".wasm") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", runtime.Version(), opts.Ldflags, opts.BuildMode)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(pkgDir, n))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Cached builds pkgDir into cacheDir (once per source hash) and returns the module's path.
func Cached(ctx context.Context, pkgDir, cacheDir string, opts Config) (string, error) {
	key, err := SourceHash(pkgDir, opts)
	if err != nil {
		return "", err
	}
	out := filepath.Join(cacheDir, filepath.Base(pkgDir)+"-"+key[:16]+".wasm")
	if fi, err := os.Stat(out); err == nil && fi.Size() > 0 {
		return out, nil
	}
	if err := Build(ctx, pkgDir, out, opts); err != nil {
		return "", err
	}
	return out, nil
}

// Stale reports whether out is missing or older than any regular file in pkgDir.
func Stale(pkgDir, out string) (bool, error) {
	ofi, err := os.Stat(out)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	ents, err := os.ReadDir(pkgDir)
	if err != nil {
		return false, err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), ".wasm") {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return false, err
		}
		if fi.ModTime().After(ofi.ModTime()) {
			return true, nil
		}
	}
	return false, nil
}

// ModeFor returns the build mode of the Go package in pkgDir: "c-shared" (a reactor, which the
// Wasm tier runs from a snapshot taken after initialisation) when a non-test file has a
// //go:wasmexport directive, "" (a command) otherwise.
func ModeFor(pkgDir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(pkgDir, "*.go"))
	if err != nil {
		return "", err
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "//go:wasmexport ") {
				return "c-shared", nil
			}
		}
	}
	return "", nil
}

// Built is one module BuildExamples looked at.
type Built struct {
	Tool   string
	Module string
	// Rebuilt is false when the module was up to date.
	Rebuilt bool
}

// BuildExamples compiles every tool folder under toolsDir whose tool.json says runtime
// "WasmCompiled" and that holds Go source, to its entrypoint, only when the module is missing or
// older than a file of the folder. Folders without Go source (prebuilt modules) are left alone.
// Sources with a //go:wasmexport directive are built as reactors (-buildmode=c-shared; see
// ModeFor), the others as commands.
func BuildExamples(ctx context.Context, toolsDir string) ([]Built, error) {
	ents, err := os.ReadDir(toolsDir)
	if err != nil {
		return nil, err
	}
	var built []Built
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(toolsDir, e.Name())
		raw, err := os.ReadFile(filepath.Join(dir, "tool.json"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return built, err
		}
		var m struct {
			Runtime    string `json:"runtime"`
			Entrypoint string `json:"entrypoint"`
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return built, fmt.Errorf("%s: tool.json: %w", dir, err)
		}
		if m.Runtime != "WasmCompiled" {
			continue
		}
		if gos, _ := filepath.Glob(filepath.Join(dir, "*.go")); len(gos) == 0 {
			continue
		}
		if m.Entrypoint == "" || !filepath.IsLocal(m.Entrypoint) {
			return built, fmt.Errorf("%s: tool.json: entrypoint %q must be a relative path inside the folder", dir, m.Entrypoint)
		}
		out := filepath.Join(dir, m.Entrypoint)
		stale, err := Stale(dir, out)
		if err != nil {
			return built, err
		}
		b := Built{Tool: e.Name(), Module: out, Rebuilt: stale}
		if stale {
			mode, err := ModeFor(dir)
			if err != nil {
				return built, err
			}
			if err := Build(ctx, dir, out, Config{BuildMode: mode}); err != nil {
				return built, err
			}
		}
		built = append(built, b)
	}
	return built, nil
}
