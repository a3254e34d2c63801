package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/opencontainers/runc/libcontainer/seccomp"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// env is what TestMain built: a tools root with a bundle running the probe tool.
var env struct {
	skip      string // why container tests cannot run here
	toolsDir  string // bundle root
	probeBin  string
	probeTool string // the bundle probeCall runs; "probe" unless a helper process changes it
}

func TestMain(m *testing.M) {
	if os.Getenv(netHelperEnv) != "" {
		// A network test re-executed in a namespace of its own (and its crash helper): its
		// parent's bundles.
		env.toolsDir = os.Getenv("AXO_OCI_TOOLS")
		os.Exit(m.Run())
	}
	if os.Getenv("AXO_OCI_CRASH_HELPER") != "" || os.Getenv("AXO_OCI_ROOTLESS_HELPER") != "" {
		// A helper re-execution uses its parent's bundles: building its own would leave them
		// behind when the parent kills it.
		env.skip = "helper process"
		os.Exit(m.Run())
	}
	code := func() int {
		dir, err := os.MkdirTemp("", "oci-test-")
		if err != nil {
			panic(err)
		}
		defer os.RemoveAll(dir)
		// Bundles are read by container inits running as other uids: keep them traversable.
		_ = os.Chmod(dir, 0o755)
		env.toolsDir = filepath.Join(dir, "tools")
		if err := setup(dir); err != nil {
			env.skip = err.Error()
		}
		return m.Run()
	}()
	os.Exit(code)
}

func setup(dir string) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: containers with cgroup limits (the rootless path is TestRootless)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return errors.New("needs /bin/busybox (apt-get install busybox-static)")
	}
	//lint:ignore SA1019 tests run where the toolchain that built them is
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	env.probeBin = filepath.Join(dir, "probetool")
	cmd := exec.Command(goBin, "build", "-o", env.probeBin, "./testdata/probetool")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build probetool: %v: %s", err, out)
	}
	return makeBundle(env.toolsDir, "probe", env.probeBin)
}

// makeBundle writes {root}/{name}/config.json + rootfs/ with the probe tool at /tool and busybox.
func makeBundle(root, name, bin string) error {
	return makeBundleArgs(root, name, bin, []string{"/tool"})
}

// makeBundleArgs is makeBundle with the process's args.
func makeBundleArgs(root, name, bin string, args []string) error {
	rootfs := filepath.Join(root, name, "rootfs")
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(bin, filepath.Join(rootfs, "tool")); err != nil {
		return err
	}
	if err := copyFile("/bin/busybox", filepath.Join(rootfs, "bin", "busybox")); err != nil {
		return err
	}
	for _, l := range []string{"sh", "sleep", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", l)); err != nil {
			return err
		}
	}
	cfg := map[string]any{
		"ociVersion": "1.2.0",
		"root":       map[string]any{"path": "rootfs"},
		"process": map[string]any{"args": args, "cwd": "/", "user": map[string]any{"uid": 0, "gid": 0},
			"env": []string{"PATH=/bin"}},
		// Things a hostile bundle might ask for; all must be ignored (the hostname too: every
		// container is "axocoatl", which tells a tool nothing about the host or the bundle).
		"hostname": "bundle-chosen",
		"hooks":    map[string]any{"prestart": []map[string]any{{"path": "/bin/touch", "args": []string{"touch", "/tmp/axocoatl-hook-ran"}}}},
		"mounts":   []map[string]any{{"destination": "/host", "type": "bind", "source": "/", "options": []string{"rbind", "rw"}}},
	}
	b, _ := json.Marshal(cfg)
	return os.WriteFile(filepath.Join(root, name, "config.json"), b, 0o644)
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

func needContainers(t testing.TB) {
	t.Helper()
	if env.skip != "" {
		t.Skip(env.skip)
	}
}

// newSandbox returns a sandbox with its own state root and cgroup parent, closed and checked for
// leftovers at the end of the test.
func newSandbox(t testing.TB, mod func(*Config)) *Sandbox {
	t.Helper()
	cfg := Config{
		StateRoot:    t.TempDir(),
		BundleRoot:   env.toolsDir,
		CgroupParent: "axocoatl-test-" + uuid.NewString()[:8],
		NoSeccomp:    noSeccomp(),
		PoolIdle:     time.Minute,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a := s.Probe(context.Background()); !a.Available {
		s.Close()
		t.Skipf("Oci unavailable: %s (fix: %s)", a.Reason, a.Fix)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		assertClean(t, s.cfg)
	})
	return s
}

// assertClean fails when anything of the sandbox's containers remains: an I/O or state dir, a
// cgroup under its parent, a process in such a cgroup, a mount under the state root.
func assertClean(t testing.TB, cfg Config) {
	t.Helper()
	ents, _ := os.ReadDir(cfg.StateRoot)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "axocoatl-") {
			t.Errorf("state dir left: %s", e.Name())
		}
	}
	for _, sub := range []string{".libcontainer", ".runtime", ".bundles"} {
		ents, _ := os.ReadDir(filepath.Join(cfg.StateRoot, sub))
		for _, e := range ents {
			t.Errorf("runtime state left: %s/%s", sub, e.Name())
		}
	}
	marker := "/" + cfg.CgroupParent + "/"
	for _, d := range cgroupDirs("/" + cfg.CgroupParent) {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if e.IsDir() {
				t.Errorf("cgroup left: %s/%s", d, e.Name())
			}
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cgroup"))
		// A zombie holds nothing but its pid until its parent (for reaped orphans, the host's
		// init) collects it.
		if st, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "stat")); strings.Contains(string(st), ") Z ") {
			continue
		}
		if err == nil && strings.Contains(string(b), marker) {
			cmd, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
			t.Errorf("process left: pid %s (%q) in %s", p.Name(), strings.ReplaceAll(string(cmd), "\x00", " "), marker)
		}
	}
	mi, _ := hostMountinfo()
	for _, l := range strings.Split(string(mi), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (strings.HasPrefix(f[4], cfg.StateRoot+"/") || strings.HasPrefix(f[4], cfg.BundleRoot+"/")) {
			t.Errorf("mount left: %s", f[4])
		}
		// A rootfs mount of one of this sandbox's bundles (field 4 is the mounted directory).
		if len(f) > 4 && strings.HasPrefix(f[4], rootsDir+"/") && (strings.HasPrefix(f[3], cfg.BundleRoot+"/") ||
			(cfg.RuntimeRoot != "" && strings.HasPrefix(f[3], cfg.RuntimeRoot))) {
			t.Errorf("rootfs mount left: %s of %s", f[4], f[3])
		}
	}
}

func probeCall(input string) sandbox.Call {
	tool := env.probeTool
	if tool == "" {
		tool = "probe"
	}
	return sandbox.Call{
		ID:      uuid.NewString(),
		Tool:    tool,
		Runtime: isolation.RequireContainerImage,
		Dir:     filepath.Join(env.toolsDir, tool),
		Input:   []byte(input),
		Limits:  sandbox.Limits{Timeout: 10 * time.Second}.WithDefaults(),
	}
}

func run(t testing.TB, s *Sandbox, input string, timeout time.Duration) (sandbox.Outcome, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.Run(ctx, probeCall(input))
}

func decode(t testing.TB, out sandbox.Outcome) map[string]any {
	t.Helper()
	if out.ExitCode != 0 {
		t.Fatalf("exit %d, stderr %q", out.ExitCode, out.Stderr)
	}
	var m map[string]any
	if err := json.Unmarshal(out.Output, &m); err != nil {
		t.Fatalf("output %q: %v", out.Output, err)
	}
	return m
}

func TestRunOutcomes(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	if s.Tier() != isolation.TierOCI {
		t.Fatalf("tier %v", s.Tier())
	}
	t.Run("echo", func(t *testing.T) {
		out, err := run(t, s, `{"op":"echo","n":42}`, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		m := decode(t, out)
		if e, _ := m["echo"].(map[string]any); e["n"] != float64(42) {
			t.Fatalf("output %s", out.Output)
		}
		if out.Backend != BackendLibcontainer {
			t.Fatalf("backend %q", out.Backend)
		}
	})
	t.Run("isolation defaults", func(t *testing.T) {
		out, err := run(t, s, `{"op":"whoami"}`, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		m := decode(t, out)
		if m["pid"] != float64(1) {
			t.Errorf("pid %v: want 1 (own pid namespace)", m["pid"])
		}
		if m["hostname"] != "axocoatl" {
			t.Errorf("hostname %v", m["hostname"])
		}
		if ifs := fmt.Sprint(m["ifaces"]); ifs != "[lo]" {
			t.Errorf("interfaces %s: want loopback only", ifs)
		}
		if m["cap_eff"] != "0000000000000000" || m["cap_bnd"] != "0000000000000000" {
			t.Errorf("capabilities eff %v bnd %v: want none", m["cap_eff"], m["cap_bnd"])
		}
		if m["no_new_privs"] != "1" {
			t.Errorf("no_new_privs %v", m["no_new_privs"])
		}
		if seccomp.Enabled && m["seccomp"] != "2" {
			t.Errorf("seccomp mode %v: want 2 (filter)", m["seccomp"])
		}
		if m["nofile"] != float64(DefaultNofile) {
			t.Errorf("RLIMIT_NOFILE %v", m["nofile"])
		}
	})
	t.Run("scratch mounts writable", func(t *testing.T) {
		// /dev/shm (POSIX semaphores, Python's multiprocessing) and /tmp stay usable.
		for _, p := range []string{"/dev/shm/sem.x", "/tmp/x"} {
			out, err := run(t, s, fmt.Sprintf(`{"op":"write","path":%q}`, p), 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if m := decode(t, out); m["error"] != "" && m["error"] != nil {
				t.Errorf("write %s: %v", p, m["error"])
			}
		}
	})
	t.Run("non-zero exit", func(t *testing.T) {
		out, err := run(t, s, `{"op":"fail","code":7,"msg":"it broke"}`, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if out.ExitCode != 7 || !strings.Contains(out.Stderr, "it broke") || out.Output != nil {
			t.Fatalf("outcome %+v", out)
		}
	})
	t.Run("output too large", func(t *testing.T) {
		_, err := run(t, s, `{"op":"bigout"}`, 20*time.Second)
		if !errors.Is(err, isolation.ErrOutputTooLarge) {
			t.Fatalf("err %v: want ErrOutputTooLarge", err)
		}
	})
	t.Run("hostile bundle settings ignored", func(t *testing.T) {
		if _, err := os.Stat("/tmp/axocoatl-hook-ran"); err == nil {
			t.Fatal("the bundle's prestart hook ran on the host")
		}
		out, err := run(t, s, `{"op":"read","path":"/host/etc/hostname"}`, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m := decode(t, out); !strings.Contains(fmt.Sprint(m["error"]), "no such file") {
			t.Fatalf("the bundle's bind mount of / was honoured: %s", out.Output)
		}
	})
}

func TestLimits(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	t.Run("spin times out", func(t *testing.T) {
		_, err := run(t, s, `{"op":"spin"}`, 1500*time.Millisecond)
		if !errors.Is(err, isolation.ErrTimeout) {
			t.Fatalf("err %v: want ErrTimeout", err)
		}
	})
	t.Run("cancel is canceled, not a timeout", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(700 * time.Millisecond); cancel() }()
		_, err := s.Run(ctx, probeCall(`{"op":"spin"}`))
		if errors.Is(err, isolation.ErrTimeout) || !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v: want context.Canceled and no ErrTimeout", err)
		}
	})
	t.Run("memory bomb", func(t *testing.T) {
		c := probeCall(`{"op":"alloc"}`)
		c.Limits.MemoryMB = 64
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := s.Run(ctx, c)
		if !errors.Is(err, isolation.ErrMemoryLimit) {
			t.Fatalf("err %v: want ErrMemoryLimit", err)
		}
	})
	t.Run("pids limit holds", func(t *testing.T) {
		out, err := run(t, s, `{"op":"forkbomb"}`, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		m := decode(t, out)
		n, _ := m["forked"].(float64)
		if n <= 0 || n >= DefaultPids {
			t.Fatalf("forked %v children: want some, fewer than the pids limit %d", n, DefaultPids)
		}
		if !strings.Contains(fmt.Sprint(m["error"]), "resource temporarily unavailable") {
			t.Fatalf("fork stopped by %v: want EAGAIN from the pids limit", m["error"])
		}
	})
	t.Run("fork bomb times out", func(t *testing.T) {
		_, err := run(t, s, `{"op":"forkbomb","hang":true}`, 3*time.Second)
		if !errors.Is(err, isolation.ErrTimeout) {
			t.Fatalf("err %v: want ErrTimeout", err)
		}
	})
}

func TestEscapes(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	hostDir := t.TempDir()
	secret := filepath.Join(hostDir, "secret")
	if err := os.WriteFile(secret, []byte("s3cret"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted sync.WaitGroup
	accepts := 0
	accepted.Add(1)
	go func() {
		defer accepted.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepts++
			c.Close()
		}
	}()
	target := filepath.Join(hostDir, "planted")
	tests := []struct {
		name, input string
	}{
		{"read host file", fmt.Sprintf(`{"op":"read","path":%q}`, secret)},
		{"read host file via /proc/1/root", fmt.Sprintf(`{"op":"read","path":%q}`, "/proc/1/root"+secret)},
		{"write host path", fmt.Sprintf(`{"op":"write","path":%q}`, target)},
		{"write rootfs", `{"op":"write","path":"/tool"}`},
		{"write input", `{"op":"write","path":"/axocoatl/input.json"}`},
		{"dial host loopback", fmt.Sprintf(`{"op":"dial","addr":%q}`, ln.Addr().String())},
		// No /sys in the container: nothing of the host's kernel and devices to read.
		{"read sysfs", `{"op":"read","path":"/sys/class/net/lo/address"}`},
		{"read sysfs kernel", `{"op":"read","path":"/sys/kernel/mm/transparent_hugepage/enabled"}`},
	}
	if seccomp.Enabled {
		tests = append(tests, struct{ name, input string }{"keyctl denied by seccomp", `{"op":"keyctl"}`})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(t, s, tc.input, 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			m := decode(t, out)
			if m["error"] == "" || m["error"] == nil {
				t.Fatalf("%s succeeded: %s", tc.name, out.Output)
			}
		})
	}
	if _, err := os.Stat(target); err == nil {
		t.Error("a container wrote a host path")
	}
	ln.Close()
	accepted.Wait()
	if accepts != 0 {
		t.Errorf("the host listener accepted %d connections from containers", accepts)
	}
}

func TestConcurrent(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([]sandbox.Outcome, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = run(t, s, fmt.Sprintf(`{"op":"echo","i":%d}`, i), 60*time.Second)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("call %d: %v", i, errs[i])
			continue
		}
		var m struct {
			Echo struct{ I int } `json:"echo"`
		}
		if err := json.Unmarshal(outs[i].Output, &m); err != nil || m.Echo.I != i {
			t.Errorf("call %d: output %s", i, outs[i].Output)
		}
	}
}

func TestPool(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, func(c *Config) { c.PoolSize = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := probeCall(`{}`)
	if err := s.Prepare(ctx, call); err != nil {
		t.Fatal(err)
	}
	if err := s.Prepare(ctx, call); err != nil {
		t.Fatalf("second Prepare: %v", err)
	}
	st := s.PoolStats()
	if len(st) != 1 || st[0].Tool != "probe" || st[0].Ready != 2 || st[0].Size != 2 {
		t.Fatalf("pool stats %+v", st)
	}
	for i := range 5 {
		c := probeCall(fmt.Sprintf(`{"op":"echo","i":%d}`, i))
		out, err := s.Run(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Echo struct{ I int } `json:"echo"`
		}
		if err := json.Unmarshal(out.Output, &m); err != nil || m.Echo.I != i {
			t.Fatalf("call %d: output %s", i, out.Output)
		}
	}
	// The filler's work must leave the tool at the normal priority.
	if err := s.Prepare(ctx, call); err != nil {
		t.Fatal(err)
	}
	out, err := s.Run(ctx, probeCall(`{"op":"whoami"}`))
	if err != nil {
		t.Fatal(err)
	}
	if m := decode(t, out); m["nice"] != float64(0) {
		t.Fatalf("a pooled tool runs at nice %v, want 0", m["nice"])
	}
	// A pooled container that times out is destroyed like a cold one.
	short, cancel2 := context.WithTimeout(ctx, time.Second)
	defer cancel2()
	if _, err := s.Run(short, probeCall(`{"op":"spin"}`)); !errors.Is(err, isolation.ErrTimeout) {
		t.Fatalf("err %v: want ErrTimeout", err)
	}
	if err := s.Prepare(ctx, call); err != nil {
		t.Fatal(err)
	}
	if st := s.PoolStats(); st[0].Ready != 2 {
		t.Fatalf("pool not refilled: %+v", st)
	}
}

// A pooled container is made from the tool as it was when the pool filled: once the bundle
// changes on disk (config.json edited in place, even to the same size; or the folder replaced),
// the next call must run the new version, and the pool refills from it.
func TestPoolSeesToolChanges(t *testing.T) {
	needContainers(t)
	root := t.TempDir()
	_ = os.Chmod(root, 0o755)
	script := func(v int) []string {
		return []string{"/bin/sh", "-c", fmt.Sprintf(`echo '{"v":%d}' > /axocoatl/output.json`, v)}
	}
	if err := makeBundleArgs(root, "ver", env.probeBin, script(1)); err != nil {
		t.Fatal(err)
	}
	s := newSandbox(t, func(c *Config) { c.PoolSize = 2; c.BundleRoot = root })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func() sandbox.Call {
		return sandbox.Call{ID: uuid.NewString(), Tool: "ver", Runtime: isolation.RequireContainerImage,
			Dir: filepath.Join(root, "ver"), Input: []byte(`{}`), Limits: sandbox.Limits{Timeout: 10 * time.Second}.WithDefaults()}
	}
	version := func() float64 {
		t.Helper()
		out, err := s.Run(ctx, call())
		if err != nil {
			t.Fatal(err)
		}
		return decode(t, out)["v"].(float64)
	}
	if err := s.Prepare(ctx, call()); err != nil {
		t.Fatal(err)
	}
	if v := version(); v != 1 {
		t.Fatalf("first call ran version %v", v)
	}
	if err := s.Prepare(ctx, call()); err != nil { // the pool is full of version-1 containers
		t.Fatal(err)
	}
	cfgPath := filepath.Join(root, "ver", "config.json")
	old, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Replace(old, []byte(`{\"v\":1}`), []byte(`{\"v\":2}`), 1)
	if bytes.Equal(edited, old) || len(edited) != len(old) {
		t.Fatalf("test bug: could not edit %s", old)
	}
	time.Sleep(20 * time.Millisecond) // past the file system's timestamp granularity
	if err := os.WriteFile(cfgPath, edited, 0o644); err != nil {
		t.Fatal(err)
	}
	for i := range 3 { // served cold, then by the refilled pool
		if v := version(); v != 2 {
			t.Fatalf("call %d after the edit ran version %v", i, v)
		}
		if err := s.Prepare(ctx, call()); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.PoolStats(); len(st) != 1 || st[0].Ready != 2 {
		t.Fatalf("pool after the edit: %+v", st)
	}
}

func TestPoolIdleDrain(t *testing.T) {
	needContainers(t)
	// Longer than a container creation on a loaded machine, or the pool is drained before it
	// ever fills and Prepare waits in vain.
	s := newSandbox(t, func(c *Config) { c.PoolSize = 1; c.PoolIdle = 1500 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Prepare(ctx, probeCall(`{}`)); err != nil {
		t.Fatal(err)
	}
	for s.PoolStats()[0].Ready != 0 {
		if ctx.Err() != nil {
			t.Fatal("pool was not drained after its idle time")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The filler destroys what it drained right after taking it out of the pool.
	for {
		var left []string
		ents, _ := os.ReadDir(s.cfg.StateRoot)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "axocoatl-") {
				left = append(left, e.Name())
			}
		}
		if len(left) == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("drained pool left %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRejects(t *testing.T) {
	needContainers(t)
	s := newSandbox(t, nil)
	outside := probeCall(`{}`)
	outside.Dir = "/etc"
	if _, err := s.Run(context.Background(), outside); err == nil || !strings.Contains(err.Error(), "bundle root") {
		t.Errorf("a tool dir outside the bundle root: err %v", err)
	}
	py := probeCall(`{}`)
	py.Runtime = isolation.RequirePython
	if why := s.Supports(isolation.RequirePython); why == "" {
		t.Error("Python supported without a runtime root")
	}
	if _, err := s.Run(context.Background(), py); !errors.Is(err, isolation.ErrTierUnavailable) {
		t.Errorf("Python call without runtime root: err %v", err)
	}
	if why := s.Supports(isolation.RequireContainerImage); why != "" {
		t.Errorf("ContainerImage: %s", why)
	}
}

// noSeccomp is true for a test binary built without -tags seccomp: containers then run without
// the profile (and the seccomp assertions are skipped) instead of every test skipping.
func noSeccomp() bool { return !seccomp.Enabled }
