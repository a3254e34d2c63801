package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
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
	s := startServer(t, &server.Options{Nkeys: []*server.NkeyUser{
		{Nkey: gwPub, Permissions: perms([]string{"axoiso.v1.run.>", "axoiso.v1.direct.>", "axoiso.v1.cancel.*", "$SRV.>"}, []string{"_INBOX.>"})},
		{Nkey: wPub, Permissions: perms([]string{"_INBOX.>"}, []string{"axoiso.v1.run.>", "axoiso.v1.direct.>", "axoiso.v1.cancel.*", "axoiso.v1.worker.>", "$SRV.>"})},
	}})
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

// testPKI writes a CA and a server certificate for 127.0.0.1 into dir: ca.pem, server.pem,
// server-key.pem.
func testPKI(t testing.TB, dir string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "axoiso test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "nats"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string]*pem.Block{"ca.pem": {Type: "CERTIFICATE", Bytes: caDER}, "server.pem": {Type: "CERTIFICATE", Bytes: der},
		"server-key.pem": {Type: "PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSecureDeployment runs a fleet on examples/fleet/nats-server.conf, the README's minimal
// secure deployment, as it is: TLS, an nkey per role, the roles' permissions. A tool is
// published, reaches the worker, and a call with an input over 1 MiB (the inputs bucket) runs
// through the gateway; a worker cannot move a tool's current version, nor a gateway publish one;
// a connection without TLS or without a known key is refused.
func TestSecureDeployment(t *testing.T) {
	dir := t.TempDir()
	testPKI(t, dir)
	seeds := map[string]string{}
	for _, role := range []string{"GATEWAY", "WORKER", "PUBLISHER"} {
		seed, pub := nkeyUser(t)
		seeds[role] = filepath.Join(dir, strings.ToLower(role)+".nk")
		if err := os.WriteFile(seeds[role], seed, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("AXOISO_"+role+"_NKEY", pub)
	}
	t.Setenv("AXOISO_NATS_NAME", "secure-test")
	t.Setenv("AXOISO_NATS_CERT", filepath.Join(dir, "server.pem"))
	t.Setenv("AXOISO_NATS_KEY", filepath.Join(dir, "server-key.pem"))
	t.Setenv("AXOISO_NATS_CA", filepath.Join(dir, "ca.pem"))
	opts, err := server.ProcessConfigFile("../examples/fleet/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts.StoreDir = t.TempDir()
	url := startServer(t, opts).ClientURL()
	dial := func(role string) *nats.Conn {
		nc, err := fleet.Connect(url, role, fleet.ConnectConfig{NKeySeedFile: seeds[role], TLSCA: filepath.Join(dir, "ca.pem")})
		if err != nil {
			t.Fatalf("%s: %v", role, err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	if nc, err := nats.Connect(url, nats.RootCAs(filepath.Join(dir, "ca.pem"))); err == nil {
		nc.Close()
		t.Fatal("a TLS connection without a key was accepted")
	}
	if nc, err := fleet.Connect(url, "no CA", fleet.ConnectConfig{NKeySeedFile: seeds["GATEWAY"]}); err == nil {
		nc.Close()
		t.Fatal("a connection that could not verify the server (no CA) was accepted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pnc, wnc, gnc := dial("PUBLISHER"), dial("WORKER"), dial("GATEWAY")
	digest, err := fleet.Publish(ctx, pnc, versionDir(t, "1"), "pub", 1)
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	w, _ := storeWorker(t, wnc, "w", isolation.TierOCI)
	waitOffered(t, []*fleet.Worker{w}, "pub", digest)
	gst := openStore(t, gnc)
	g := newGateway(t, gnc, fleet.GatewayConfig{Store: gst})
	gw, err := executor.New(executor.Config{Catalog: mustCatalog(t, gst.Root()), Remote: g})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := call(ctx, gw, "pub", `{}`); err != nil || r.ToolDigest != digest {
		t.Fatalf("call: %+v %v", r, err)
	}
	big := `{"pad":"` + strings.Repeat("x", 3<<20/2) + `"}`
	if _, err := call(ctx, gw, "pub", big); err != nil {
		t.Fatalf("call with an input over 1 MiB: %v", err)
	}
	// Each role is refused what belongs to another.
	short, cancelShort := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort()
	js, _ := jetstream.New(wnc)
	if kv, err := js.KeyValue(short, fleet.CurrentBucket); err != nil {
		t.Fatalf("worker binding the current-digest bucket: %v", err)
	} else if _, err := kv.Put(short, "pub", []byte(strings.Repeat("0", 64))); err == nil {
		t.Fatal("a worker moved a tool's current version")
	}
	short2, cancelShort2 := context.WithTimeout(ctx, 3*time.Second)
	defer cancelShort2()
	if _, err := fleet.Publish(short2, gnc, versionDir(t, "2"), "pub", 1); err == nil {
		t.Fatal("a gateway published a tool")
	}
}
