package oci

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// A script tool that names a base image runs on that bundle's root, with the bundle's
// environment, as the unprivileged uid: no runtime root needed.
func TestScriptToolOnBase(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil) // no RuntimeRoot
	if why := s.SupportsBase(isolation.RequireShell); why != "" {
		t.Fatalf("SupportsBase(Shell) = %q", why)
	}
	dir := filepath.Join(env.toolsDir, "on-base")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	script := `read -r l < /axocoatl/input.json; printf '{"in":%s,"uid":"%s","path":"%s","home":"%s","busybox":"%s"}' "$l" "$(id -u)" "$PATH" "$HOME" "$(ls /bin/busybox)" > /axocoatl/output.json`
	if err := os.WriteFile(filepath.Join(dir, "main.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"cold", "pooled"} {
		t.Run(mode, func(t *testing.T) {
			call := sandbox.Call{ID: uuid.NewString(), Tool: "on-base", Runtime: isolation.RequireShell, Dir: dir,
				Entrypoint: filepath.Join(dir, "main.sh"), Base: filepath.Join(env.toolsDir, "probe"), Input: []byte(`{"x":1}`),
				Limits: sandbox.Limits{Timeout: 10 * time.Second}.WithDefaults()}
			if mode == "pooled" {
				if err := s.Prepare(context.Background(), call); err != nil {
					t.Fatal(err)
				}
			}
			o, err := s.Run(context.Background(), call)
			if err != nil {
				t.Fatal(err)
			}
			m := decode(t, o)
			want := map[string]any{"uid": "65534", "path": "/bin", "home": "/tmp", "busybox": "/bin/busybox"}
			for k, v := range want {
				if m[k] != v {
					t.Errorf("%s = %v, want %v (%v)", k, m[k], v, m)
				}
			}
		})
	}
	// A base outside the bundle root is refused.
	call := sandbox.Call{ID: uuid.NewString(), Tool: "on-base", Runtime: isolation.RequireShell, Dir: dir,
		Entrypoint: filepath.Join(dir, "main.sh"), Base: t.TempDir(), Input: []byte(`{}`),
		Limits: sandbox.Limits{Timeout: 10 * time.Second}.WithDefaults()}
	if _, err := s.Run(context.Background(), call); err == nil {
		t.Error("a base outside the bundle root ran")
	}
}
