package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/internal/testutil"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/oci"
)

// TestFullStateRootIsSandboxFailed: a real container tier whose state root is full fails the
// call; that is the tier's failure, not the tool's and not the service's: 503 sandbox_failed
// naming the tier, retryable (it was 500 internal without a tier).
func TestFullStateRootIsSandboxFailed(t *testing.T) {
	testutil.RequiresRoot(t, "containers, a tmpfs")
	rt := t.TempDir()
	testutil.BusyboxTree(t, rt, "sh", "cat")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "copy"), 0o755)
	os.WriteFile(filepath.Join(root, "copy/tool.json"), []byte(`{"runtime":"Shell","entrypoint":"run.sh"}`), 0o644)
	os.WriteFile(filepath.Join(root, "copy/run.sh"), []byte("cat /axocoatl/input.json > /axocoatl/output.json\n"), 0o644)

	state := t.TempDir()
	if err := syscall.Mount("tmpfs", state, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(state, syscall.MNT_DETACH) })
	ctr, err := oci.New(oci.Config{StateRoot: state, BundleRoot: root, RuntimeRoot: rt, PoolSize: -1, CgroupParent: "axocoatl-servertest"})
	if err != nil {
		t.Fatal(err)
	}
	testutil.RequiresAvailable(t, ctr)
	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	exec, err := executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{native.New(), ctr}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Executor: exec})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer func() { ts.Close(); s.Close() }()

	if resp, body := do(t, "POST", ts.URL+"/v1/tools/copy/execute", `{"a":1}`, nil); resp.StatusCode != 200 {
		t.Fatalf("a call before the state root filled up: %d %s", resp.StatusCode, body)
	}
	// Fill the state root. The first call's container is torn down after its answer, on a
	// goroutine of its own: if that frees space while the next call runs, the call may fit, so
	// fill again and retry; a 200 with the root still full is the failure.
	f, err := os.Create(filepath.Join(state, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4<<10)
	fill := func() (wrote bool) {
		for {
			if _, err := f.Write(chunk); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				return wrote
			}
			wrote = true
		}
	}
	fill()
	var resp *http.Response
	var body []byte
	for attempt := 0; ; attempt++ {
		resp, body = do(t, "POST", ts.URL+"/v1/tools/copy/execute", `{"a":1}`, nil)
		if resp.StatusCode != 200 || attempt == 5 || !fill() {
			break
		}
		t.Logf("space was freed during call %d (a teardown): the root is full again, retrying", attempt)
	}
	var e errorDoc
	json.Unmarshal(body, &e)
	if resp.StatusCode != 503 || e.Error.Kind != "sandbox_failed" || e.Error.Tier != "Oci" || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(e.Error.Message, "space") {
		t.Errorf("a call on a full state root: %d %s", resp.StatusCode, body)
	}
	t.Logf("full state root: %d %s", resp.StatusCode, body)
	f.Close() // space held by an open file is not freed by its removal
	os.Remove(filepath.Join(state, "filler"))
	if resp, body := do(t, "POST", ts.URL+"/v1/tools/copy/execute", `{"a":1}`, nil); resp.StatusCode != 200 {
		t.Errorf("a call once the state root has room again: %d %s", resp.StatusCode, body)
	}
}
