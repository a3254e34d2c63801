package microvm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/guest"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/microvm/internal/vmimage"
	"github.com/axocoatl/isolation/sandbox/sandboxtest"
)

// fakeDriver is a microvm.Driver whose "VMM" is a real process (sleep) and whose agent is a
// goroutine speaking the real guest protocol over a socket pair. It runs no tool: a tool file
// containing "hang" never answers, any other answers with its input. The Sandbox's own logic
// (pools, deadlines, cancellation, Close, the run directories and pidfiles) runs as with QEMU,
// in milliseconds instead of a TCG boot per call, so the conformance suite can run it on every
// host.
type fakeDriver struct {
	mu    sync.Mutex
	pids  []int // guarded by mu: every VMM process started
	boots int   // guarded by mu
}

func (d *fakeDriver) Name() string { return "fake" }

func (d *fakeDriver) Probe(context.Context) isolation.Availability {
	return isolation.Availability{Available: true, Backend: d.Name()}
}

func (d *fakeDriver) GuestChannel() string { return "ttyS1" }

func (d *fakeDriver) Boot(ctx context.Context, spec microvm.BootSpec) (microvm.Machine, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cmd := exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(spec.RunDir, "vmm.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, err
	}
	d.mu.Lock()
	d.pids = append(d.pids, cmd.Process.Pid)
	d.boots++
	d.mu.Unlock()
	host, agent := net.Pipe()
	m := &fakeMachine{cmd: cmd, host: host, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(m.done)
		agent.Close() // a dead VMM's agent is gone: its channel ends
	}()
	go fakeAgent(agent, m.done)
	return m, nil
}

// leftovers lists the fake VMM processes still alive.
func (d *fakeDriver) leftovers() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, pid := range d.pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !bytes.Contains(b, []byte(") Z ")) {
			out = append(out, fmt.Sprintf("fake VMM process %d", pid))
		}
	}
	return out
}

// fakeAgent sends READY, then answers Hello with READY and a request with a response (or never,
// for a "hang" tool), as cmd/axoiso-guest does.
func fakeAgent(conn net.Conn, done <-chan struct{}) {
	defer conn.Close()
	if guest.WriteFrame(conn, guest.TypeReady, guest.Ready{Agent: "fake"}) != nil {
		return
	}
	fr := guest.NewReader(conn)
	for {
		typ, body, err := fr.Next()
		if err != nil {
			return
		}
		switch typ {
		case guest.TypeHello:
			var h guest.Hello
			if json.Unmarshal(body, &h) != nil || guest.WriteFrame(conn, guest.TypeReady, guest.Ready{Nonce: h.Nonce, Agent: "fake"}) != nil {
				return
			}
		case guest.TypeRequest:
			var req guest.Request
			if json.Unmarshal(body, &req) != nil {
				return
			}
			hang := false
			for _, f := range req.Files {
				if f.Path == req.Entrypoint && bytes.Contains(f.Data, []byte("hang")) {
					hang = true
				}
			}
			if hang {
				<-done // the host kills the VM at the call's deadline or cancellation
				return
			}
			guest.WriteFrame(conn, guest.TypeResponse, guest.Response{Output: req.Input, HasOutput: true})
			return // the real agent powers the VM off after its one call
		default:
			return
		}
	}
}

type fakeMachine struct {
	cmd      *exec.Cmd
	host     net.Conn
	done     chan struct{}
	killOnce sync.Once
}

func (m *fakeMachine) Channel(ctx context.Context) (io.ReadWriteCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return m.host, nil
}

func (m *fakeMachine) PID() int { return m.cmd.Process.Pid }

func (m *fakeMachine) Kill() error {
	m.killOnce.Do(func() {
		if err := m.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return
		}
	})
	<-m.done
	m.host.Close()
	return nil
}

func (m *fakeMachine) Done() <-chan struct{} { return m.done }

// fakeImage writes a data dir whose manifest the Sandbox accepts; its files are never booted.
func fakeImage(t *testing.T) string {
	dir := t.TempDir()
	for _, f := range []string{"vmlinux", "initramfs.cpio"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("fake"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "rootfs"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(vmimage.Image{Version: vmimage.FormatVersion, Kernel: "vmlinux", Initrd: "initramfs.cpio", RootFS: "rootfs"})
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestConformanceFakeDriver runs the lifecycle suite against the microVM Sandbox with the fake
// driver, unpooled and pooled: the Sandbox's own lifecycle, on every host, in seconds.
func TestConformanceFakeDriver(t *testing.T) {
	for _, poolSize := range []int{0, 2} {
		t.Run(fmt.Sprintf("pool=%d", poolSize), func(t *testing.T) {
			sandboxtest.Run(t, func(t *testing.T) sandboxtest.Subject {
				d := &fakeDriver{}
				runDir := t.TempDir()
				s, err := microvm.New(microvm.Config{Drivers: []microvm.Driver{d}, DataDir: fakeImage(t), RunDir: runDir, PoolSize: poolSize})
				if err != nil {
					t.Fatal(err)
				}
				adir, aentry := tool(t, "answer.sh", "#!/bin/sh\ncat /axocoatl/input.json > /axocoatl/output.json\n", 0o755)
				hdir, hentry := tool(t, "hang.sh", "#!/bin/sh\n# hang\nwhile :; do :; done\n", 0o755)
				return sandboxtest.Subject{
					Sandbox: s,
					Answer:  call("fake-answer", isolation.RequireShell, adir, aentry, `{}`, 10*time.Second),
					Hang:    call("fake-hang", isolation.RequireShell, hdir, hentry, `{}`, 10*time.Second),
					Leftovers: func() []string {
						out := d.leftovers()
						entries, _ := os.ReadDir(runDir)
						for _, e := range entries {
							out = append(out, "run dir entry "+e.Name())
						}
						return out
					},
				}
			})
		})
	}
}

// TestFakeDriverPoolServesCalls: with a pool, calls are served by pre-booted machines (the
// fake's boot count runs ahead of the calls) and a closed Sandbox leaves no VMM behind.
func TestFakeDriverPoolServesCalls(t *testing.T) {
	d := &fakeDriver{}
	s, err := microvm.New(microvm.Config{Drivers: []microvm.Driver{d}, DataDir: fakeImage(t), RunDir: t.TempDir(), PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	dir, entry := tool(t, "answer.sh", "#!/bin/sh\n", 0o755)
	c := call("fake-pool", isolation.RequireShell, dir, entry, `{"n":1}`, 10*time.Second)
	if err := s.Prepare(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	waitReady := func() {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if ps := s.PoolStats(); len(ps) == 1 && ps[0].Ready == ps[0].Size {
				return
			}
		}
		t.Fatalf("the pool never filled: %+v", s.PoolStats())
	}
	for i := 0; i < 5; i++ {
		waitReady()
		out, err := s.Run(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(out.Output)) != `{"n":1}` {
			t.Fatalf("output %q", out.Output)
		}
	}
	if st := s.Stats(); st.Pooled != 5 || st.Cold != 0 {
		t.Errorf("want every call served by a pooled VM: %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if l := d.leftovers(); len(l) > 0 {
		t.Errorf("after Close: %v", l)
	}
}

// TestNetworkPolicyRefused: where the tier cannot give a VM a NIC (no egress gate, a driver
// without NICs), a call with a network policy is refused (tier unavailable, saying why) before
// any VM boots, never run as if it had none; Prepare refuses it too, and Probe and
// SupportsEgress say why.
func TestNetworkPolicyRefused(t *testing.T) {
	gate, err := egress.NewGate(egress.GateConfig{Resolver: "127.0.0.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		gate *egress.Gate
		why  string
	}{
		{"no gate", nil, "no egress gate"},
		{"a driver without NICs", gate, "cannot give a VM a network device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &fakeDriver{}
			s, err := microvm.New(microvm.Config{Drivers: []microvm.Driver{d}, DataDir: fakeImage(t), RunDir: t.TempDir(), Gate: tc.gate})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			dir, entry := tool(t, "answer.sh", "#!/bin/sh\n", 0o755)
			c := call("fake-net", isolation.RequireShell, dir, entry, `{}`, 10*time.Second)
			ps, err := egress.ParsePatterns([]string{"api.example.com:443"})
			if err != nil {
				t.Fatal(err)
			}
			c.Limits.Egress = egress.NewPolicy(ps...)
			if _, err := s.Run(context.Background(), c); !errors.Is(err, isolation.ErrTierUnavailable) || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("err = %v, want tier unavailable saying %q", err, tc.why)
			}
			if err := s.Prepare(context.Background(), c); !errors.Is(err, isolation.ErrTierUnavailable) {
				t.Fatalf("Prepare: %v", err)
			}
			if why := s.SupportsEgress(); !strings.Contains(why, tc.why) {
				t.Fatalf("SupportsEgress %q", why)
			}
			if a := s.Probe(context.Background()); !strings.HasPrefix(a.Network, "unavailable: ") || !strings.Contains(a.Network, tc.why) {
				t.Fatalf("Probe network %q", a.Network)
			}
			if l := d.leftovers(); len(l) > 0 {
				t.Errorf("a VM was started: %v", l)
			}
		})
	}
}
