package oci

import (
	"context"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/sandboxtest"
)

var conformanceBundles struct {
	once sync.Once
	err  error
}

// TestConformance runs the lifecycle suite against every backend, cold and pooled.
func TestConformance(t *testing.T) {
	needContainers(t)
	conformanceBundles.once.Do(func() {
		conformanceBundles.err = makeBundleArgs(env.toolsDir, "conf-echo", env.probeBin, []string{"/bin/sh", "-c", "cat /axocoatl/input.json > /axocoatl/output.json"})
		if conformanceBundles.err == nil {
			conformanceBundles.err = makeBundleArgs(env.toolsDir, "conf-spin", env.probeBin, []string{"/bin/sh", "-c", "while :; do :; done"})
		}
		if conformanceBundles.err == nil {
			conformanceBundles.err = makeBundleArgs(env.toolsDir, "conf-print", env.probeBin, []string{"/bin/sh", "-c",
				"echo '" + sandboxtest.PrintStdout + "'; echo '" + sandboxtest.PrintStderr + "' >&2; echo '{}' > /axocoatl/output.json"})
		}
	})
	if conformanceBundles.err != nil {
		t.Fatal(conformanceBundles.err)
	}
	call := func(tool string) sandbox.Call {
		return sandbox.Call{ID: uuid.NewString(), Tool: tool, Runtime: isolation.RequireContainerImage,
			Dir: filepath.Join(env.toolsDir, tool), Input: []byte(`{}`), Limits: sandbox.Limits{Timeout: 20 * time.Second}.WithDefaults()}
	}
	for _, v := range []struct {
		name    string
		backend string
		pooled  bool
	}{
		{"libcontainer", BackendLibcontainer, false},
		{"libcontainer-pooled", BackendLibcontainer, true},
		{"crun", BackendCrun, false},
		{"runc", BackendRunc, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			if v.backend != BackendLibcontainer {
				if _, err := exec.LookPath(v.backend); err != nil {
					t.Skipf("no %s binary (apt-get install %s)", v.backend, v.backend)
				}
			}
			sandboxtest.Run(t, func(t *testing.T) sandboxtest.Subject {
				s := newSandbox(t, func(c *Config) {
					c.Backend = v.backend
					if !v.pooled {
						c.PoolSize = -1
					}
				})
				answer, hang, print := call("conf-echo"), call("conf-spin"), call("conf-print")
				if v.pooled {
					for _, c := range []sandbox.Call{answer, hang, print} {
						if err := s.Prepare(context.Background(), c); err != nil {
							t.Fatal(err)
						}
					}
				}
				return sandboxtest.Subject{Sandbox: s, Answer: answer, Hang: hang, Print: print}
			})
		})
	}
}
