package microvm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/microvm/internal/vmimage"
	"github.com/axocoatl/isolation/sandbox/microvm/qemu"
)

// testDataDir caches the prepared guest across test runs (Prepare is idempotent), one per agent
// build: work trees with different agents testing at once on one machine would otherwise
// re-prepare the shared dir under each other's running tests. Dirs of other agents unused for a
// day are removed. Not shared with cmd/axoiso's e2e test, which prepares its own dir
// (concurrently, with other options) when the packages' tests run in parallel.
var testDataDir string

const testDataBase = "/var/cache/axocoatl-test"

var (
	image     vmimage.Image
	skipWhy   string
	runRoot   string
	debugSink = os.Getenv("AXO_VM_DEBUG") != ""
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	skipWhy = prepare()
	if root := os.Getenv(orphanHelperEnv); root != "" {
		if skipWhy != "" {
			fmt.Println("ERROR", skipWhy)
			return 1
		}
		os.RemoveAll(runRoot)
		orphanHelper(root) // never returns
	}
	code := m.Run()
	if skipWhy == "" {
		// After the suite no VMM, socket or run dir of this process may remain.
		if left := leftovers(); left != "" {
			fmt.Fprintln(os.Stderr, "LEAK after the suite:", left)
			code = 1
		}
		os.RemoveAll(runRoot)
	}
	return code
}

func prepare() string {
	if runtime.GOOS != "linux" || os.Geteuid() != 0 {
		return "needs Linux as root"
	}
	for _, bin := range []string{"qemu-system-x86_64", "apt-get", "dpkg-deb", "go"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " not found (apt-get install qemu-system-x86)"
		}
	}
	tmp, err := os.MkdirTemp("", "axo-agent-")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(tmp)
	agent := filepath.Join(tmp, "axoiso-guest")
	build := exec.Command("go", "build", "-trimpath", "-o", agent, "github.com/axocoatl/isolation/cmd/axoiso-guest")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Sprintf("build agent: %v: %s", err, out)
	}
	bin, err := os.ReadFile(agent)
	if err != nil {
		return err.Error()
	}
	sum := sha256.Sum256(bin)
	testDataDir = filepath.Join(testDataBase, "microvm-"+hex.EncodeToString(sum[:6]))
	if old, _ := filepath.Glob(filepath.Join(testDataBase, "microvm-*")); len(old) > 0 {
		for _, d := range old {
			if fi, err := os.Stat(filepath.Join(d, "manifest.json")); d != testDataDir && (err != nil && time.Since(dirTime(d)) > 24*time.Hour || err == nil && time.Since(fi.ModTime()) > 24*time.Hour) {
				os.RemoveAll(d)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	// With mkfs.ext4 (e2fsprogs) the image has a root drive, which VMs boot by default.
	_, noExt4 := exec.LookPath("mkfs.ext4")
	image, err = vmimage.Prepare(ctx, vmimage.Config{DataDir: testDataDir, Agent: agent, Ext4: noExt4 == nil})
	if err != nil {
		return "vm prepare failed (no apt mirror?): " + err.Error()
	}
	now := time.Now()
	_ = os.Chtimes(filepath.Join(testDataDir, "manifest.json"), now, now) // in use: not pruned
	fmt.Fprintf(os.Stderr, "vm prepare: %.1fs (built in %.1fs when first run)\n", time.Since(start).Seconds(), image.PrepareSeconds)
	runRoot, err = os.MkdirTemp("", "axo-vmrun-")
	if err != nil {
		return err.Error()
	}
	return ""
}

func dirTime(d string) time.Time {
	if fi, err := os.Stat(d); err == nil {
		return fi.ModTime()
	}
	return time.Time{}
}

// leftovers lists qemu processes started under runRoot and files left in it.
func leftovers() string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte("qemu-system")) && bytes.Contains(b, []byte(runRoot)) {
			out = append(out, "process "+p)
		}
	}
	entries, _ := os.ReadDir(runRoot)
	for _, e := range entries {
		out = append(out, "file "+e.Name())
	}
	return strings.Join(out, ", ")
}

func newSandbox(t testing.TB, opts microvm.Config) *microvm.Sandbox {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	// AXO_QEMU_VIRTIO=1 puts the agent on a virtio-console port (the suite then tests that
	// channel; A/B measurements).
	opts.Drivers = []microvm.Driver{qemu.New(qemu.Config{VirtioConsole: os.Getenv("AXO_QEMU_VIRTIO") != ""})}
	opts.DataDir = testDataDir
	opts.ExtraCmdline = strings.TrimSpace(opts.ExtraCmdline + " " + os.Getenv("AXO_VM_CMDLINE"))
	opts.RunDir = runRoot
	level := slog.LevelWarn
	if os.Getenv("AXO_VM_LOG") == "debug" {
		level = slog.LevelDebug // per-call spans
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	}
	if debugSink {
		opts.Debug = os.Stderr
	}
	s, err := microvm.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if _, err := os.Stat(s.RunDir()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run dir %s survived Close", s.RunDir())
		}
	})
	return s
}

// tool writes a tool folder with one entrypoint file. The folder is 0755 (t.TempDir's own 0700
// would be a folder the tool's uid cannot enter: refused).
func tool(t testing.TB, name, content string, mode os.FileMode) (dir, entry string) {
	dir = filepath.Join(t.TempDir(), "tool")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	entry = filepath.Join(dir, name)
	if err := os.WriteFile(entry, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	return dir, entry
}

func call(id string, req isolation.RuntimeRequirement, dir, entry, input string, timeout time.Duration) sandbox.Call {
	return sandbox.Call{ID: id, Tool: "t", Runtime: req, Dir: dir, Entrypoint: entry, Input: []byte(input),
		Limits: sandbox.Limits{Timeout: timeout}.WithDefaults()}
}

const pyEcho = `import json, os, sys
with open("/axocoatl/input.json") as f:
    data = json.load(f)
print("to stderr", file=sys.stderr)
with open("/axocoatl/output.json", "w") as f:
    json.dump({"sum": sum(data["n"]), "uid": os.getuid()}, f)
`

const shEcho = `#!/bin/sh
read -r line < /axocoatl/input.json
printf '{"got":%s,"host":"%s"}' "$line" "$(hostname)" > /axocoatl/output.json
echo shell-stderr >&2
`

func TestRunTools(t *testing.T) {
	s := newSandbox(t, microvm.Config{})
	cases := []struct {
		name    string
		req     isolation.RuntimeRequirement
		file    string
		content string
		input   string
		check   func(t *testing.T, out map[string]any)
		stderr  string
	}{
		{"python", isolation.RequirePython, "main.py", pyEcho, `{"n":[1,2,3,4]}`, func(t *testing.T, out map[string]any) {
			if out["sum"] != 10.0 {
				t.Errorf("sum = %v, want 10", out["sum"])
			}
			if out["uid"] != 65534.0 {
				t.Errorf("tool ran as uid %v, want 65534 (nobody)", out["uid"])
			}
		}, "to stderr"},
		{"shell", isolation.RequireShell, "main.sh", shEcho, `{"k":"v"}`, func(t *testing.T, out map[string]any) {
			got, _ := out["got"].(map[string]any)
			if got["k"] != "v" {
				t.Errorf("got = %v, want the input back", out["got"])
			}
			if out["host"] != "call-shell" {
				t.Errorf("hostname = %v, want the call id", out["host"])
			}
		}, "shell-stderr"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, entry := tool(t, tc.file, tc.content, 0o644)
			o, err := s.Run(context.Background(), call("call-"+tc.name, tc.req, dir, entry, tc.input, 20*time.Second))
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if o.ExitCode != 0 || o.Backend != "qemu-microvm-tcg" && o.Backend != "qemu-microvm-kvm" {
				t.Fatalf("outcome %+v", o)
			}
			var out map[string]any
			if err := json.Unmarshal(o.Output, &out); err != nil {
				t.Fatalf("output %q: %v", o.Output, err)
			}
			tc.check(t, out)
			if !strings.Contains(o.Stderr, tc.stderr) {
				t.Errorf("stderr %q lacks %q", o.Stderr, tc.stderr)
			}
			// The interpreter must find its (precompiled, sourceless) stdlib without complaint.
			if strings.Contains(o.Stderr, "Could not find") {
				t.Errorf("stderr %q: the guest's Python misses its libraries", o.Stderr)
			}
		})
	}
}

func TestSpinningToolTimesOut(t *testing.T) {
	s := newSandbox(t, microvm.Config{})
	dir, entry := tool(t, "spin", "#!/bin/sh\nwhile :; do :; done\n", 0o755)
	start := time.Now()
	_, err := s.Run(context.Background(), call("spin", isolation.RequireArbitrary, dir, entry, `{}`, 1500*time.Millisecond))
	if !errors.Is(err, isolation.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	t.Logf("stopped after %s: %v", time.Since(start).Round(time.Millisecond), err)
}

func TestContextCancelKillsVM(t *testing.T) {
	s := newSandbox(t, microvm.Config{})
	dir, entry := tool(t, "main.sh", "sleep 60\n", 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// Cancel once the VM is up and the tool is sleeping.
		for i := 0; i < 600; i++ {
			if strings.Contains(leftovers(), "process") {
				time.Sleep(2 * time.Second)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		cancel()
	}()
	_, err := s.Run(ctx, call("cancel", isolation.RequireShell, dir, entry, `{}`, 60*time.Second))
	if !errors.Is(err, context.Canceled) || errors.Is(err, isolation.ErrTimeout) {
		t.Fatalf("err = %v, want context.Canceled (not ErrTimeout) after cancel", err)
	}
}

// The tool tries to read a host file, write a host path and dial a host loopback port; all three
// must fail, and the host must see no trace.
func TestToolCannotReachHost(t *testing.T) {
	s := newSandbox(t, microvm.Config{})
	hostDir := t.TempDir()
	secret := filepath.Join(hostDir, "secret")
	if err := os.WriteFile(secret, []byte("host-secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(hostDir, "written-by-tool")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
			accepted <- struct{}{}
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	script := fmt.Sprintf(`import json, socket
res = {}
try:
    res["read"] = open(%q).read()
except Exception as e:
    res["read_err"] = repr(e)
try:
    with open(%q, "w") as f:
        f.write("x")
    res["wrote"] = True
except Exception as e:
    res["write_err"] = repr(e)
try:
    socket.create_connection(("127.0.0.1", %d), timeout=2).close()
    res["dialed"] = True
except Exception as e:
    res["dial_err"] = repr(e)
try:  # the guest's own loopback is up: 127.0.0.1 is the VM, never the host
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.create_connection(srv.getsockname(), timeout=2)
    a, _ = srv.accept()
    c.sendall(b"hi")
    res["self_loop"] = a.recv(2).decode()
except Exception as e:
    res["self_loop_err"] = repr(e)
json.dump(res, open("/axocoatl/output.json", "w"))
`, secret, target, port)
	dir, entry := tool(t, "escape.py", script, 0o644)
	o, err := s.Run(context.Background(), call("escape", isolation.RequirePython, dir, entry, `{}`, 20*time.Second))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	var res map[string]any
	if err := json.Unmarshal(o.Output, &res); err != nil {
		t.Fatalf("output %q: %v (stderr %s)", o.Output, err, o.Stderr)
	}
	t.Logf("guest saw: %v", res)
	if _, ok := res["read"]; ok || res["read_err"] == nil {
		t.Errorf("the tool read the host file: %v", res)
	}
	if _, err := os.Stat(target); err == nil {
		t.Errorf("the tool wrote the host path %s", target)
	}
	if res["dialed"] == true || res["dial_err"] == nil {
		t.Errorf("the tool dialed the host loopback: %v", res)
	}
	if res["self_loop"] != "hi" {
		t.Errorf("a tool cannot use the guest's own loopback: %v", res)
	}
	select {
	case <-accepted:
		t.Errorf("the host listener accepted a connection from the guest")
	default:
	}
}

const pyRandom = `import json, os, socket
json.dump({"rand": os.urandom(16).hex(), "host": socket.gethostname()}, open("/axocoatl/output.json", "w"))
`

// Pooled VMs refilled from one snapshot must not share random state or identity.
func TestPoolFromSnapshotClonesDiffer(t *testing.T) {
	s := newSandbox(t, microvm.Config{PoolSize: 1, Snapshots: true, WarmPool: true})
	dir, entry := tool(t, "rand.py", pyRandom, 0o644)
	seen := map[string]string{}
	for i := 0; i < 3; i++ {
		if i > 0 {
			waitPool(t, s, 1)
		}
		id := fmt.Sprintf("clone-%d", i)
		o, err := s.Run(context.Background(), call(id, isolation.RequirePython, dir, entry, `{}`, 20*time.Second))
		if err != nil {
			t.Fatalf("Run %d: %v", i, err)
		}
		var res map[string]string
		if err := json.Unmarshal(o.Output, &res); err != nil {
			t.Fatalf("output %q: %v", o.Output, err)
		}
		if res["host"] != id {
			t.Errorf("call %s ran with hostname %q", id, res["host"])
		}
		if prev, dup := seen[res["rand"]]; dup {
			t.Errorf("calls %s and %s got the same random bytes %s", prev, id, res["rand"])
		}
		seen[res["rand"]] = id
	}
	st := s.Stats()
	if st.Pooled < 2 || st.Restored+st.Pooled < 3 {
		t.Errorf("stats %+v: want at least 2 pooled calls and every VM restored from the snapshot", st)
	}
	if ps := s.PoolStats(); len(ps) != 1 || ps[0].Size != 1 {
		t.Errorf("PoolStats = %+v", ps)
	}
	// A ready VM reports its VMM's resident set: more than the guest kernel's few MB, less than
	// a QEMU holding all of its guest memory and then some.
	waitPool(t, s, 1)
	if ps := s.PoolStats(); len(ps) != 1 || ps[0].IdleRSSBytes < 16<<20 || ps[0].IdleRSSBytes > 1<<30 {
		t.Errorf("idle RSS of the pooled VM: %+v", ps)
	}
}

const shRootFS = `#!/bin/sh
t=$(awk '$2=="/"{t=$3} END{print t}' /proc/mounts)
m=$(awk '$1=="MemTotal:"{print int($2/1024)}' /proc/meminfo)
printf '{"rootfs":"%s","mem_mb":%s}' "$t" "$m" > /axocoatl/output.json
`

// An image with a root drive boots from it by default (the agent switches to the ext4 drive);
// WithRootInInitramfs keeps the whole-root initramfs path working (what Firecracker images without a
// drive boot).
func TestRootDriveAndInitramfsRoot(t *testing.T) {
	cases := []struct {
		name   string
		opts   microvm.Config
		memMB  int
		want   string
		maxMem int // the guest's MemTotal must be at most this (MiB): the shape's floor applied
	}{
		{"drive-128mb", microvm.Config{}, 128, "ext4", 128},
		{"initramfs", microvm.WithRootInInitramfs(microvm.Config{}), 128, "rootfs", microvm.MinMemoryMB},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == "ext4" && (image.Ext4 == "" || image.BootInitrd == "") {
				t.Skip("the image has no root drive (mkfs.ext4 missing: apt-get install e2fsprogs)")
			}
			s := newSandbox(t, tc.opts)
			dir, entry := tool(t, "root.sh", shRootFS, 0o644)
			c := call("root-"+tc.name, isolation.RequireShell, dir, entry, `{}`, 20*time.Second)
			c.Limits.MemoryMB = tc.memMB
			o, err := s.Run(context.Background(), c)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			var res struct {
				RootFS string `json:"rootfs"`
				MemMB  int    `json:"mem_mb"`
			}
			if err := json.Unmarshal(o.Output, &res); err != nil {
				t.Fatalf("output %q: %v (stderr %s)", o.Output, err, o.Stderr)
			}
			if res.RootFS != tc.want {
				t.Errorf("the guest's / is %q, want %q", res.RootFS, tc.want)
			}
			if res.MemMB <= tc.maxMem/2 || res.MemMB > tc.maxMem {
				t.Errorf("the guest has %d MiB, want at most %d (and more than half)", res.MemMB, tc.maxMem)
			}
		})
	}
}

const shPristine = `#!/bin/sh
pre=absent; [ -e /axocoatl/output.json ] && pre=present
files=$(ls -A /axocoatl/tool | tr '\n' ' ')
top=$(ls -A /axocoatl | tr '\n' ' ')
printf '{"pre":"%s","files":"%s","top":"%s","host":"%s"}' "$pre" "$files" "$top" "$(hostname)" > /axocoatl/output.json
`

// A pooled VM rehearsed a throw-away call before it waited (guest.Hello.Rehearse): the real call
// must find no trace of it, and the agent must report where its time went.
func TestPooledCallAfterRehearsalIsPristine(t *testing.T) {
	s := newSandbox(t, microvm.Config{PoolSize: 1, Snapshots: true})
	dir, entry := tool(t, "probe.sh", shPristine, 0o644)
	for i := 0; i < 2; i++ {
		if i > 0 {
			waitPool(t, s, 1)
		}
		id := fmt.Sprintf("pristine-%d", i)
		before := s.Stats()
		o, err := s.Run(context.Background(), call(id, isolation.RequireShell, dir, entry, `{}`, 20*time.Second))
		if err != nil {
			t.Fatalf("Run %d: %v", i, err)
		}
		var res map[string]string
		if err := json.Unmarshal(o.Output, &res); err != nil {
			t.Fatalf("output %q: %v (stderr %s)", o.Output, err, o.Stderr)
		}
		want := map[string]string{"pre": "absent", "files": "probe.sh ", "top": "input.json tool ", "host": id}
		for k, w := range want {
			if res[k] != w {
				t.Errorf("call %d: %s = %q, want %q (output %v)", i, k, res[k], w, res)
			}
		}
		after := s.Stats()
		if after.GuestUS <= before.GuestUS || after.ExchangeUS <= before.ExchangeUS {
			t.Errorf("call %d: spans not reported: before %+v after %+v", i, before, after)
		}
	}
	if st := s.Stats(); st.Pooled < 1 {
		t.Errorf("stats %+v: want a pooled call", st)
	}
}

func waitPool(t testing.TB, s *microvm.Sandbox, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if ps := s.PoolStats(); len(ps) > 0 && ps[0].Ready >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pool never reached %d ready VMs: %+v", n, s.PoolStats())
}

func TestProbeWithoutImage(t *testing.T) {
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	s, err := microvm.New(microvm.Config{Drivers: []microvm.Driver{qemu.New(qemu.Config{})}, DataDir: t.TempDir(), RunDir: runRoot})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := s.Probe(context.Background())
	if a.Available || !strings.Contains(a.Fix, "axoiso vm prepare") {
		t.Errorf("Probe without an image = %+v, want unavailable with a prepare fix", a)
	}
	if _, err := s.Run(context.Background(), call("x", isolation.RequirePython, "/nonexistent", "/nonexistent/a.py", `{}`, time.Second)); !errors.Is(err, isolation.ErrTierUnavailable) && err == nil {
		t.Errorf("Run without an image: %v", err)
	}
}

// lockedBuffer collects log lines from concurrent goroutines.
type lockedBuffer struct {
	mu sync.Mutex // protects b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A cold boot's READY carries the agent's boot timeline (guest clock), logged at debug level:
// the steps are in order and the kernel's part (before the agent) is not zero.
func TestColdBootReportsGuestSpans(t *testing.T) {
	var logs lockedBuffer
	s := newSandbox(t, microvm.Config{Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	dir, entry := tool(t, "main.sh", shEcho, 0o755)
	if _, err := s.Run(context.Background(), call("spans", isolation.RequireShell, dir, entry, `1`, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	var ready struct {
		Msg     string `json:"msg"`
		Launch  int64  `json:"launch_us"`
		Ready   int64  `json:"ready_us"`
		Agent   int64  `json:"guest_agent_us"`
		Modules int64  `json:"guest_modules_us"`
		Root    int64  `json:"guest_root_us"`
		Channel int64  `json:"guest_channel_us"`
	}
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, `"VM ready"`) {
			if err := json.Unmarshal([]byte(l), &ready); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ready.Msg == "" {
		t.Fatalf("no VM ready record in the logs:\n%s", logs.String())
	}
	// Steps a boot skips (no modules, no root drive) read 0; the others are in order.
	ordered := ready.Agent > 0 && ready.Channel > 0 && ready.Ready >= ready.Launch
	last := int64(0)
	for _, v := range []int64{ready.Agent, ready.Modules, ready.Root, ready.Channel} {
		if v == 0 {
			continue
		}
		ordered = ordered && v >= last
		last = v
	}
	if !ordered {
		t.Fatalf("boot spans out of order: %+v", ready)
	}
	t.Logf("boot: %+v", ready)
}
