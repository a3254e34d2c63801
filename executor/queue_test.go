package executor_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

// wasmModule is a module whose _start runs body (no locals), with one page of memory.
func wasmModule(body ...byte) []byte {
	sec := func(id byte, payload ...byte) []byte { return append([]byte{id, byte(len(payload))}, payload...) }
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, sec(1, 1, 0x60, 0, 0)...)
	m = append(m, sec(3, 1, 0)...)
	m = append(m, sec(5, 1, 0, 1)...)
	m = append(m, sec(7, 1, 6, '_', 's', 't', 'a', 'r', 't', 0, 0)...)
	code := append(append([]byte{0}, body...), 0x0b)
	return append(m, sec(10, append([]byte{1, byte(len(code))}, code...)...)...)
}

// TestQueuedTimeNotCharged: a call waiting for the Wasm tier's only instance slot is not timed
// out by its own (short) timeout: the tier starts the tool's clock when the call has its slot
// (sandbox.Queuer), and the executor does not impose the deadline on the queue.
func TestQueuedTimeNotCharged(t *testing.T) {
	root := t.TempDir()
	for name, tool := range map[string]struct {
		json string
		mod  []byte
	}{
		"spin":  {`{"runtime":"WasmCompiled","entrypoint":"m.wasm","timeout_ms":60000}`, wasmModule(0x03, 0x40, 0x0c, 0x00, 0x0b)},
		"quick": {`{"runtime":"WasmCompiled","entrypoint":"m.wasm","timeout_ms":50}`, wasmModule(0x01)},
	} {
		os.MkdirAll(filepath.Join(root, name), 0o755)
		os.WriteFile(filepath.Join(root, name, "tool.json"), []byte(tool.json), 0o644)
		os.WriteFile(filepath.Join(root, name, "m.wasm"), tool.mod, 0o644)
	}
	c, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := wasm.New(wasm.Config{MaxConcurrency: 1, QueueTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	e, err := executor.New(executor.Config{Catalog: c, Sandboxes: []sandbox.Sandbox{sb}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	spun := make(chan error, 1)
	go func() {
		_, err := e.Execute(ctx, "spin", []byte(`{}`))
		spun <- err
	}()
	time.Sleep(300 * time.Millisecond) // spin holds the slot
	quick := make(chan error, 1)
	go func() {
		_, err := e.Execute(context.Background(), "quick", []byte(`{}`))
		quick <- err
	}()
	select {
	case err := <-quick:
		t.Fatalf("the queued call returned while the slot was taken: %v", err)
	case <-time.After(300 * time.Millisecond): // six times its timeout
	}
	cancel()
	if err := <-spun; !errors.Is(err, context.Canceled) {
		t.Errorf("spin: %v", err)
	}
	// It ran: the nop module writes no output.
	if err := <-quick; !errors.Is(err, isolation.ErrOutputMissing) {
		t.Fatalf("queued call: %v, want it to run (ErrOutputMissing)", err)
	}
}
