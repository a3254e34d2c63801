package fleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/fleet"
	"github.com/axocoatl/isolation/sandbox"
)

// jsServer is a nats-server with JetStream on a loopback port.
func jsServer(t testing.TB) *server.Server {
	t.Helper()
	return startServer(t, &server.Options{JetStream: true, StoreDir: t.TempDir()})
}

// storeNode is a worker or a gateway whose tools come from the fleet's buckets.
func openStore(t testing.TB, nc *nats.Conn) *fleet.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := fleet.OpenStore(ctx, nc, fleet.StoreConfig{Dir: t.TempDir(), Grace: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func storeWorker(t testing.TB, nc *nats.Conn, name string, tiers ...isolation.Tier) (*fleet.Worker, *fleet.Store) {
	t.Helper()
	st := openStore(t, nc)
	cat, err := catalog.Open(st.Root())
	if err != nil {
		t.Fatal(err)
	}
	var sbs []sandbox.Sandbox
	for _, tr := range tiers {
		sbs = append(sbs, &fakeTier{tier: tr, worker: name})
	}
	e, err := executor.New(executor.Config{Catalog: cat, Sandboxes: sbs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := fleet.StartWorker(ctx, fleet.WorkerConfig{Conn: nc, Executor: e, Store: st, Heartbeat: 100 * time.Millisecond, Host: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, st
}

func versionDir(t testing.TB, v string) string {
	dir := filepath.Join(t.TempDir(), "pub")
	writeTool(t, filepath.Dir(dir), "pub", `{"runtime":"Python","entrypoint":"main.py"}`)
	if err := os.WriteFile(filepath.Join(dir, "version"), []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// waitOffered waits until every worker offers tool at digest.
func waitOffered(t testing.TB, ws []*fleet.Worker, tool, digest string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		all := true
		for _, w := range ws {
			found := false
			for _, o := range w.Status().Offers {
				if o.Tool == tool && o.Digest == digest {
					found = true
				}
			}
			all = all && found
		}
		if all {
			return time.Since(start)
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("%s@%.12s not offered by every worker within 60 s", tool, digest)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPublishUnderLoad: calls run while a new version is published: each answer comes from the
// old or the new version, whole (its digest and its content agree), nothing fails, and after
// the publish the new one answers; rollback brings the old one back.
func TestPublishUnderLoad(t *testing.T) {
	s := jsServer(t)
	url := s.ClientURL()
	var ws []*fleet.Worker
	for _, n := range []string{"a", "b"} {
		w, _ := storeWorker(t, connect(t, url), n, isolation.TierOCI)
		ws = append(ws, w)
	}
	gnc := connect(t, url)
	gst := openStore(t, gnc)
	g := newGateway(t, gnc, fleet.GatewayConfig{Store: gst})
	pub := connect(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	d1, err := fleet.Publish(ctx, pub, versionDir(t, "1"), "pub", 1)
	if err != nil {
		t.Fatal(err)
	}
	waitOffered(t, ws, "pub", d1)
	for {
		if _, err := os.Stat(filepath.Join(gst.Root(), "pub")); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cat, _ := catalog.Open(gst.Root())
	gw, err := executor.New(executor.Config{Catalog: cat, Remote: g})
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	seen := map[string]string{} // digest → version
	var failures []error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := call(ctx, gw, "pub", `{}`)
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				} else {
					var o struct{ Version string }
					json.Unmarshal(r.Output, &o)
					if prev, ok := seen[r.ToolDigest]; ok && prev != o.Version {
						failures = append(failures, &mixErr{r.ToolDigest, prev, o.Version})
					}
					seen[r.ToolDigest] = o.Version
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	d2, err := fleet.Publish(ctx, pub, versionDir(t, "2"), "pub", 1)
	if err != nil {
		t.Fatal(err)
	}
	conv := waitOffered(t, ws, "pub", d2)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("converged in %s; answers by digest: %v", conv, seen)
	if len(failures) > 0 {
		t.Fatalf("%d failures during the publish, first: %v", len(failures), failures[0])
	}
	if seen[d1] != "1" || seen[d2] != "2" {
		t.Fatalf("versions seen %v, want %s→1 and %s→2", seen, d1, d2)
	}
	if r, err := call(ctx, gw, "pub", `{}`); err != nil || r.ToolDigest != d2 {
		t.Fatalf("after the publish: %+v %v, want %s", r, err, d2)
	}

	back, err := fleet.Rollback(ctx, pub, "pub")
	if err != nil || back != d1 {
		t.Fatalf("rollback: %s %v, want %s", back, err, d1)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := call(ctx, gw, "pub", `{}`)
		if err == nil && r.ToolDigest == d1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the rollback: %+v %v", r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type mixErr struct{ digest, a, b string }

func (m *mixErr) Error() string {
	return "digest " + m.digest + " answered as version " + m.a + " and " + m.b
}

// TestPublishRefusesBase: a script tool on a base image names a bundle beside it, which the
// published tar would not hold: the publish is refused (invalid_tool, naming the base) and
// nothing is stored.
func TestPublishRefusesBase(t *testing.T) {
	nc := connect(t, jsServer(t).ClientURL())
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "pybase", "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "pybase", "config.json"), []byte(`{}`), 0o644); err != nil {
		t.Fatal(err)
	}
	writeTool(t, root, "onbase", `{"runtime":"Python","entrypoint":"main.py","base":"pybase"}`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := fleet.Publish(ctx, nc, filepath.Join(root, "onbase"), "onbase", 1)
	if !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), `"pybase"`) {
		t.Fatalf("publish of a tool with a base: %v, want invalid tool naming the base", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.KeyValue(ctx, fleet.CurrentBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("the current-digest bucket: %v, want none (nothing published)", err)
	}
}
