package server

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/wasm"
	"github.com/axocoatl/isolation/server/internal/testtools"
)

// TestShutdownAnswersCancelledCalls: calls still running when the grace period ends are
// cancelled and every client reads its 503 canceled answer before the connections close (it read
// an empty reply when the connections were closed under the cancelled handlers). Real Wasm calls
// of a tool that spins for 5 s, real HTTP clients on a real listener.
func TestShutdownAnswersCancelledCalls(t *testing.T) {
	root := t.TempDir()
	testtools.WriteTool(t, root, "spin", `{"runtime":"WasmCompiled","entrypoint":"tool.wasm","timeout_ms":5000}`)
	// _start: loop br 0 end — spins until the tier stops it.
	if err := os.WriteFile(filepath.Join(root, "spin", "tool.wasm"), handModule(1, 0x03, 0x40, 0x0c, 0x00, 0x0b), 0o644); err != nil {
		t.Fatal(err)
	}
	ws, err := wasm.New(wasm.Config{})
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	exec, err := executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{native.New(), ws}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Executor: exec, GracePeriod: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	if err := exec.Prepare(ctx, "spin"); err != nil {
		t.Fatal(err)
	}

	type reply struct {
		code  int
		retry string
		body  string
		err   error
	}
	const clients = 3
	replies := make(chan reply, clients)
	for range clients {
		go func() {
			resp, err := http.Post("http://"+ln.Addr().String()+"/v1/tools/spin/execute", "application/json", strings.NewReader(`{}`))
			if err != nil {
				replies <- reply{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			replies <- reply{code: resp.StatusCode, retry: resp.Header.Get("Retry-After"), body: string(b), err: err}
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); s.inFlight.Load() < clients; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d calls in flight, want %d", s.inFlight.Load(), clients)
		}
	}
	time.Sleep(100 * time.Millisecond) // past the body, into the tier
	start := time.Now()
	cancel() // SIGTERM
	for range clients {
		r := <-replies
		var e errorDoc
		if r.err != nil || r.code != http.StatusServiceUnavailable || json.Unmarshal([]byte(r.body), &e) != nil ||
			e.Error.Kind != "canceled" || e.Error.CallID == "" || r.retry == "" || !strings.Contains(e.Error.Message, "shut down") {
			t.Errorf("a call in flight at shutdown got %d %q (Retry-After %q, err %v); want 503 canceled", r.code, r.body, r.retry, r.err)
		}
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	// The grace period is 0.5 s; the calls would have run 5 s.
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("shutdown took %s", d)
	}
}
