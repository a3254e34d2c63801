package fleet_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/fleet"
	"github.com/axocoatl/isolation/internal/wasmbuild"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

func nkeyUser(t testing.TB) (seed []byte, pub string) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, _ = kp.Seed()
	pub, _ = kp.PublicKey()
	return seed, pub
}

func perms(pub, sub []string) *server.Permissions {
	return &server.Permissions{Publish: &server.SubjectPermission{Allow: pub}, Subscribe: &server.SubjectPermission{Allow: sub}}
}

// TestRolePermissions: nkey users with the README's per-role permissions. The fleet works with
// them, and each role is refused what belongs to another (a worker cannot send calls, a gateway
// cannot take them).
func TestRolePermissions(t *testing.T) {
	gwSeed, gwPub := nkeyUser(t)
	wSeed, wPub := nkeyUser(t)
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true, Nkeys: []*server.NkeyUser{
		{Nkey: gwPub, Permissions: perms([]string{"axoiso.v1.run.>", "axoiso.v1.direct.>", "axoiso.v1.cancel.*", "$SRV.>"}, []string{"_INBOX.>"})},
		{Nkey: wPub, Permissions: perms([]string{"_INBOX.>"}, []string{"axoiso.v1.run.>", "axoiso.v1.direct.>", "axoiso.v1.cancel.*", "axoiso.v1.worker.>", "$SRV.>"})},
	}})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("no server")
	}
	t.Cleanup(s.Shutdown)
	violations := make(chan error, 16)
	dial := func(seed []byte) *nats.Conn {
		opt, err := fleet.NKeySeedOption(seed)
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(s.ClientURL(), opt, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	if _, err := nats.Connect(s.ClientURL()); err == nil {
		t.Fatal("a connection without a key was accepted")
	}
	root := toolsRoot(t)
	wnc := dial(wSeed)
	startWorker(t, wnc, fakeExecutor(t, root, "w", "", isolation.TierOCI), 2)
	gnc := dial(gwSeed)
	gw := gatewayExec(t, root, newGateway(t, gnc, fleet.GatewayConfig{}), false)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if r, err := call(ctx, gw, "py", `{}`); err != nil || r.Tier != isolation.TierOCI {
		t.Fatalf("call with role permissions: %+v %v", r, err)
	}
	select {
	case err := <-violations:
		t.Fatalf("a permitted flow was refused: %v", err)
	default:
	}
	// A worker may not send calls; a gateway may not take them.
	wnc.Publish("axoiso.v1.run.Oci.py."+strings.Repeat("0", 64), []byte("{}"))
	wnc.Flush()
	gnc.Subscribe("axoiso.v1.run.>", func(*nats.Msg) {})
	gnc.Flush()
	for i := 0; i < 2; i++ {
		select {
		case err := <-violations:
			if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Fatalf("got %v, want a permissions violation", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a role's forbidden operation was not refused")
		}
	}
}

// TestEmbeddedRealWasm: serve --nats embedded's path, with the real Wasm tier: a call crosses
// the in-process nats-server to the worker and back with its result and the tool's digest.
func TestEmbeddedRealWasm(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := embedded(t)
	root, _, gw := wasmFleet(ctx, t, conn(t, e, "w"), conn(t, e, "gw"))
	r, err := call(ctx, gw, "hello-wasm", `{"name":"fleet"}`)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Output) != `{"greeting":"Hello, fleet!"}` || r.Tier != isolation.TierWasm || len(r.ToolDigest) != 64 {
		t.Fatalf("result %+v", r)
	}
	if d, err := fleet.NewDigests().Of(mustTool(t, root, "hello-wasm")); err != nil || d != r.ToolDigest {
		t.Fatalf("digest %s %v, want %s", d, err, r.ToolDigest)
	}
	if _, err := call(ctx, gw, "hello-wasm", `{"name":5}`); !errors.Is(err, isolation.ErrInvalidInput) {
		t.Fatalf("bad input: %v", err)
	}
}

// wasmModule builds examples/tools/hello-wasm (cached per source version).
func wasmModule(ctx context.Context, t testing.TB) string {
	t.Helper()
	mode, err := wasmbuild.ModeFor("../examples/tools/hello-wasm")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := wasmbuild.Cached(ctx, "../examples/tools/hello-wasm", filepath.Join(os.TempDir(), "axocoatl-wasmbuild-cache"), wasmbuild.Config{BuildMode: mode})
	if err != nil {
		t.Skipf("building hello-wasm: %v", err)
	}
	return mod
}

// wasmFleet builds hello-wasm, a worker with the real Wasm tier on wnc, and a gateway executor
// on gnc. It returns the tools root, the worker's own executor (local calls) and the gateway's.
func wasmFleet(ctx context.Context, t testing.TB, wnc, gnc *nats.Conn) (string, *executor.Executor, *executor.Executor) {
	t.Helper()
	mod := wasmModule(ctx, t)
	root := t.TempDir()
	writeWasmTool(t, root, mod)
	local := wasmExecutor(t, root)
	startWorker(t, wnc, local, 4)
	return root, local, gatewayExec(t, root, newGateway(t, gnc, fleet.GatewayConfig{}), false)
}

// wasmExecutor is an executor of root's tools with the real Wasm tier.
func wasmExecutor(t testing.TB, root string) *executor.Executor {
	t.Helper()
	ws, err := wasm.New(wasm.Config{})
	if err != nil {
		t.Fatal(err)
	}
	local, err := executor.New(executor.Config{Catalog: mustCatalog(t, root), Sandboxes: []sandbox.Sandbox{ws}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { local.Close() })
	return local
}
