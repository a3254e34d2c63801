package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation/sandbox/microvm"
)

// syncBuffer collects the VMM's output (written by exec's copy goroutine, read by the test).
type syncBuffer struct {
	mu sync.Mutex // protects b
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeBinary links the test binary as "<dir>/<name>": TestMain then runs as that program.
func fakeBinary(t *testing.T, name string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(shortTempDir(t), name)
	if err := os.Symlink(self, link); err != nil {
		t.Fatal(err)
	}
	spec, err := filepath.Abs(specPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("FAKEFC_SPEC", spec)
	return link
}

// guestFiles creates stand-ins for kernel, initrd and root drive (the fake never boots them).
func guestFiles(t *testing.T) (kernel, initrd, root string) {
	dir := shortTempDir(t)
	kernel, initrd, root = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd.cpio"), filepath.Join(dir, "root.ext4")
	for _, p := range []string{kernel, initrd, root} {
		if err := os.WriteFile(p, []byte("stand-in"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return
}

// fakeRequests extracts "METHOD /path" lines and bodies the subprocess fake logged.
func fakeRequests(out string) (reqs []string, bodies []string) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 5)
		if len(f) >= 4 && f[0] == "FAKEFC" && f[1] == "REQ" {
			reqs = append(reqs, f[2]+" "+f[3])
			if len(f) == 5 {
				bodies = append(bodies, f[4])
			} else {
				bodies = append(bodies, "")
			}
		}
	}
	return
}

func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func echo(t *testing.T, ctx context.Context, m microvm.Machine, msg, wantPrefix string) {
	t.Helper()
	ch, err := m.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	ch2, err := m.Channel(ctx)
	if err != nil || ch2 != ch {
		t.Fatalf("second Channel call returned a different stream (%v)", err)
	}
	if _, err := io.WriteString(ch, msg+"\n"); err != nil {
		t.Fatal(err)
	}
	want := wantPrefix + ":" + msg + "\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(ch, got); err != nil || string(got) != want {
		t.Fatalf("echo = %q, %v; want %q", got, err, want)
	}
}

// TestDriverLifecycle runs the driver against a real subprocess that serves the spec-checked fake
// API and emulates Firecracker's vsock device: boot → channel → snapshot → kill → restore into a
// fresh process → channel → kill, then checks requests, sockets and processes.
func TestDriverLifecycle(t *testing.T) {
	bin := fakeBinary(t, "firecracker")
	t.Setenv("FAKEFC_REFUSE_FIRST", "2") // the agent is "still booting" for two dials
	kernel, initrd, root := guestFiles(t)
	d := New(Config{Binary: bin})
	ctx := testCtx(t)

	runA := shortTempDir(t)
	var outA syncBuffer
	m, err := d.Boot(ctx, microvm.BootSpec{ID: "vm-a", RunDir: runA, Kernel: kernel, Initrd: initrd, RootDrive: root,
		Cmdline: "axocoatl.chan=" + d.GuestChannel(), VCPUs: 2, MemoryMB: 256, Stderr: &outA})
	if err != nil {
		t.Fatalf("Boot: %v\n%s", err, outA.String())
	}
	defer m.Kill()
	pid := m.PID()
	if b, err := os.ReadFile(filepath.Join(runA, "vmm.pid")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Fatalf("vmm.pid = %q, %v; want %d", b, err, pid)
	}
	echo(t, ctx, m, "ping", "vm-a")

	snapDir := shortTempDir(t)
	snap, err := d.Snapshot(ctx, m, snapDir)
	if err != nil {
		t.Fatalf("Snapshot: %v\n%s", err, outA.String())
	}
	for _, p := range []string{snap.State, snap.Memory} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 || filepath.Dir(p) != snapDir {
			t.Fatalf("snapshot file %s: %v", p, err)
		}
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Kill")
	}
	if err := m.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}
	if !processGone(pid) {
		t.Fatalf("VMM pid %d still exists after Kill", pid)
	}
	for _, s := range []string{"api.sock", "v.sock"} {
		if _, err := os.Lstat(filepath.Join(runA, s)); !os.IsNotExist(err) {
			t.Errorf("%s left in the run dir after Kill: %v", s, err)
		}
	}
	if _, err := m.Channel(ctx); err == nil {
		t.Error("Channel after Kill succeeded")
	}

	reqs, bodies := fakeRequests(outA.String())
	want := []string{"GET /", "PUT /machine-config", "PUT /boot-source", "PUT /drives/root", "PUT /vsock",
		"PUT /entropy", "PUT /actions", "PATCH /vm", "PUT /snapshot/create"}
	if strings.Join(reqs, ",") != strings.Join(want, ",") {
		t.Fatalf("boot requests\n got %v\nwant %v", reqs, want)
	}
	for i, wantBody := range map[int][]string{
		1: {`"vcpu_count":2`, `"mem_size_mib":256`},
		2: {`"kernel_image_path":"` + kernel, `"initrd_path":"` + initrd, `axocoatl.chan=vsock:1024`, `pci=off`},
		3: {`"drive_id":"root"`, `"is_read_only":true`, `"is_root_device":false`, `"path_on_host":"` + root},
		4: {`"guest_cid":3`, `"uds_path":"` + filepath.Join(runA, "v.sock")},
		6: {`"action_type":"InstanceStart"`},
		7: {`"state":"Paused"`},
		8: {`"snapshot_type":"Full"`},
	} {
		for _, w := range wantBody {
			if !strings.Contains(bodies[i], w) {
				t.Errorf("%s body %s lacks %s", reqs[i], bodies[i], w)
			}
		}
	}

	runB := shortTempDir(t)
	var outB syncBuffer
	t.Setenv("FAKEFC_REFUSE_FIRST", "0")
	m2, err := d.Restore(ctx, snap, microvm.BootSpec{ID: "vm-b", RunDir: runB, Kernel: kernel, Initrd: initrd, RootDrive: root,
		VCPUs: 2, MemoryMB: 256, Stderr: &outB})
	if err != nil {
		t.Fatalf("Restore: %v\n%s", err, outB.String())
	}
	defer m2.Kill()
	echo(t, ctx, m2, "pong", "vm-b")
	pid2 := m2.PID()
	m2.Kill()
	if !processGone(pid2) {
		t.Fatalf("restored VMM pid %d still exists", pid2)
	}
	reqs, bodies = fakeRequests(outB.String())
	if strings.Join(reqs, ",") != "GET /,PUT /snapshot/load" {
		t.Fatalf("restore requests %v", reqs)
	}
	for _, w := range []string{`"mem_backend":{"backend_type":"File","backend_path":"` + snap.Memory, `"resume_vm":true`,
		`"vsock_override":{"uds_path":"` + filepath.Join(runB, "v.sock")} {
		if !strings.Contains(bodies[1], w) {
			t.Errorf("load body %s lacks %s", bodies[1], w)
		}
	}
	if s := outA.String() + outB.String(); strings.Contains(s, "VIOLATION") {
		t.Fatalf("the fake saw spec violations:\n%s", s)
	}
}

// TestDriverBootFailuresCleanUp: bad specs are refused before anything starts; a VMM that dies or
// never opens its socket is killed and waited for.
func TestDriverBootFailuresCleanUp(t *testing.T) {
	kernel, initrd, _ := guestFiles(t)
	dir := shortTempDir(t)
	hang := filepath.Join(dir, "firecracker-hang")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	falseBin, err := exec.LookPath("false")
	if err != nil {
		t.Skip("no false binary")
	}
	good := func(run string) microvm.BootSpec {
		return microvm.BootSpec{ID: "vm-x", RunDir: run, Kernel: kernel, Initrd: initrd, VCPUs: 1, MemoryMB: 128}
	}
	cases := []struct {
		name    string
		binary  string
		mutate  func(*microvm.BootSpec)
		timeout time.Duration
		wantMsg string
	}{
		{"id with slash", hang, func(s *microvm.BootSpec) { s.ID = "../x" }, 0, "invalid vm id"},
		{"id too long", hang, func(s *microvm.BootSpec) { s.ID = strings.Repeat("a", 65) }, 0, "invalid vm id"},
		{"relative run dir", hang, func(s *microvm.BootSpec) { s.RunDir = "run" }, 0, "run dir"},
		{"missing kernel", hang, func(s *microvm.BootSpec) { s.Kernel = "/nonexistent/vmlinux" }, 0, "kernel"},
		{"relative kernel", hang, func(s *microvm.BootSpec) { s.Kernel = "vmlinux" }, 0, "kernel"},
		{"unclean initrd", hang, func(s *microvm.BootSpec) { s.Initrd = filepath.Dir(initrd) + "/../x/initrd" }, 0, "initrd"},
		{"zero vcpus", hang, func(s *microvm.BootSpec) { s.VCPUs = 0 }, 0, "vCPUs"},
		{"vmm exits", falseBin, nil, 0, "exited before"},
		{"vmm never opens its socket", hang, nil, 150 * time.Millisecond, "not ready"},
		{"missing binary", "/nonexistent/firecracker", nil, 0, "start"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			run := shortTempDir(t)
			spec := good(run)
			if tc.mutate != nil {
				tc.mutate(&spec)
			}
			d := New(Config{Binary: tc.binary, SocketTimeout: 5 * time.Second})
			ctx := testCtx(t)
			if tc.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeout)
				defer cancel()
			}
			m, err := d.Boot(ctx, spec)
			if err == nil {
				m.Kill()
				t.Fatal("Boot succeeded")
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantMsg)
			}
			if b, err := os.ReadFile(filepath.Join(run, "vmm.pid")); err == nil {
				pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
				if pid <= 0 || !processGone(pid) {
					t.Fatalf("VMM pid %q still exists after a failed Boot", b)
				}
			}
		})
	}
}

func TestProbe(t *testing.T) {
	dir := shortTempDir(t)
	kvm := filepath.Join(dir, "kvm")
	if err := os.WriteFile(kvm, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	fc := filepath.Join(dir, "firecracker")
	if err := os.WriteFile(fc, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	noexec := filepath.Join(dir, "firecracker-noexec")
	if err := os.WriteFile(noexec, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A working KVM device cannot be faked with a file (Probe asks it for its API version): the
	// cases that need one use the host's /dev/kvm and are skipped where it does not work.
	realKVM := KVMDevice
	if f, err := os.OpenFile(KVMDevice, os.O_RDWR, 0); err != nil || checkKVM(f) != nil {
		realKVM = ""
		if f != nil {
			f.Close()
		}
	} else {
		f.Close()
	}
	cases := []struct {
		name      string
		opts      Config
		available bool
		reason    string
	}{
		{"all present", Config{KVMDevice: realKVM, Binary: fc}, true, ""},
		{"not a kvm device", Config{KVMDevice: kvm, Binary: fc}, false, "not a working KVM"},
		{"no kvm", Config{KVMDevice: filepath.Join(dir, "nokvm"), Binary: fc}, false, "does not exist"},
		{"kvm not openable", Config{KVMDevice: dir, Binary: fc}, false, "cannot open"},
		{"missing binary", Config{KVMDevice: realKVM, Binary: filepath.Join(dir, "nope")}, false, "firecracker binary"},
		{"binary not executable", Config{KVMDevice: realKVM, Binary: noexec}, false, "not an executable"},
		{"jailer exec file name", Config{KVMDevice: realKVM, Jailer: &Jailer{Binary: fc, ExecFile: filepath.Join(dir, "kvm"), ChrootBaseDir: dir}}, false, "must contain"},
		{"jailer relative base", Config{KVMDevice: realKVM, Jailer: &Jailer{Binary: fc, ExecFile: fc, ChrootBaseDir: "srv"}}, false, "absolute"},
		{"jailer ok", Config{KVMDevice: realKVM, Jailer: &Jailer{Binary: fc, ExecFile: fc, ChrootBaseDir: dir}}, true, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.KVMDevice == "" {
				t.Skip("needs a working /dev/kvm, which this host lacks")
			}
			a := New(tc.opts).Probe(context.Background())
			if a.Available != tc.available || !strings.Contains(a.Reason, tc.reason) || a.Backend != Backend {
				t.Fatalf("Probe = %+v, want available=%v reason containing %q", a, tc.available, tc.reason)
			}
			if !a.Available && a.Fix == "" {
				t.Fatalf("unavailable without a fix: %+v", a)
			}
		})
	}
	// The real host: here (no /dev/kvm) it must say so.
	if _, err := os.Stat(KVMDevice); os.IsNotExist(err) {
		if a := New(Config{}).Probe(context.Background()); a.Available || !strings.Contains(a.Reason, "/dev/kvm") {
			t.Fatalf("Probe on a host without KVM = %+v", a)
		}
	}
}

// TestRealBoot boots a real Firecracker microVM where the host can. It needs /dev/kvm, firecracker
// in PATH and a guest (AXOISO_FC_KERNEL: vmlinux, AXOISO_FC_INITRD: initramfs whose /init is the
// axocoatl agent listening on vsock port 1024).
func TestRealBoot(t *testing.T) {
	d := New(Config{})
	if a := d.Probe(context.Background()); !a.Available {
		t.Skipf("firecracker unavailable on this host: %s (fix: %s)", a.Reason, a.Fix)
	}
	kernel, initrd := os.Getenv("AXOISO_FC_KERNEL"), os.Getenv("AXOISO_FC_INITRD")
	if kernel == "" || initrd == "" {
		t.Skip("AXOISO_FC_KERNEL and AXOISO_FC_INITRD are not set (run axoiso vm prepare and point them at its kernel and initramfs)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	run := shortTempDir(t)
	var out syncBuffer
	m, err := d.Boot(ctx, microvm.BootSpec{ID: "real-1", RunDir: run, Kernel: kernel, Initrd: initrd,
		Cmdline: microvm.CmdlineChannel + "=" + d.GuestChannel(), VCPUs: 1, MemoryMB: 256, Stderr: &out})
	if err != nil {
		t.Fatalf("Boot: %v\n%s", err, out.String())
	}
	defer m.Kill()
	ch, err := m.Channel(ctx)
	if err != nil {
		t.Fatalf("Channel: %v\n%s", err, out.String())
	}
	// The agent speaks first (its READY frame): at least one byte must arrive.
	b := make([]byte, 1)
	if _, err := io.ReadFull(ch, b); err != nil {
		t.Fatalf("no READY from the agent: %v\n%s", err, out.String())
	}
	snap, err := d.Snapshot(ctx, m, shortTempDir(t))
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	m.Kill()
	m2, err := d.Restore(ctx, snap, microvm.BootSpec{ID: "real-2", RunDir: shortTempDir(t), Kernel: kernel, Initrd: initrd, VCPUs: 1, MemoryMB: 256})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	defer m2.Kill()
	if _, err := m2.Channel(ctx); err != nil {
		t.Fatalf("Channel after restore: %v", err)
	}
}

// TestDriverJailer runs the lifecycle through a fake jailer (which builds the jail directory and
// execs the fake Firecracker rooted there): guest files are imported into the jail, the snapshot
// is moved out of it, the restore imports it into a new jail, and Kill removes each jail.
func TestDriverJailer(t *testing.T) {
	fc := fakeBinary(t, "firecracker")
	jailerBin := fakeBinary(t, "jailer")
	base := shortTempDir(t)
	kernel, initrd, root := guestFiles(t)
	d := New(Config{Jailer: &Jailer{Binary: jailerBin, ExecFile: fc, UID: os.Getuid(), GID: os.Getgid(), ChrootBaseDir: base}})
	ctx := testCtx(t)

	var out syncBuffer
	m, err := d.Boot(ctx, microvm.BootSpec{ID: "jail-a", RunDir: shortTempDir(t), Kernel: kernel, Initrd: initrd, RootDrive: root,
		VCPUs: 1, MemoryMB: 128, Stderr: &out})
	if err != nil {
		t.Fatalf("Boot: %v\n%s", err, out.String())
	}
	defer m.Kill()
	jailA := filepath.Join(base, "firecracker", "jail-a")
	for _, f := range []string{"root/vmlinux", "root/initrd", "root/root.ext4", "root/api.sock"} {
		if _, err := os.Lstat(filepath.Join(jailA, f)); err != nil {
			t.Errorf("jail lacks %s: %v", f, err)
		}
	}
	echo(t, ctx, m, "hi", "jail-a")
	// The jailer drops to the configured ids and caps the VMM's memory at guest RAM plus the
	// overhead margin.
	args, _ := os.ReadFile(filepath.Join(base, "args-jail-a"))
	for _, w := range []string{"--uid\n" + strconv.Itoa(os.Getuid()), "pids.max=128",
		strconv.FormatInt(int64(128+JailerOverheadMB)<<20, 10)} {
		if !strings.Contains(string(args), w) {
			t.Errorf("jailer args lack %q:\n%s", w, args)
		}
	}
	reqs, bodies := fakeRequests(out.String())
	joined := strings.Join(bodies, "\n")
	for _, w := range []string{`"kernel_image_path":"/vmlinux"`, `"initrd_path":"/initrd"`, `"path_on_host":"/root.ext4"`, `"uds_path":"/v.sock"`} {
		if !strings.Contains(joined, w) {
			t.Errorf("jailed requests lack %s: %v", w, reqs)
		}
	}
	snap, err := d.Snapshot(ctx, m, shortTempDir(t))
	if err != nil {
		t.Fatalf("Snapshot: %v\n%s", err, out.String())
	}
	if _, err := os.Stat(snap.Memory); err != nil {
		t.Fatalf("snapshot not moved out of the jail: %v", err)
	}
	m.Kill()
	if _, err := os.Lstat(jailA); !os.IsNotExist(err) {
		t.Fatalf("jail %s left after Kill: %v", jailA, err)
	}

	var outB syncBuffer
	m2, err := d.Restore(ctx, snap, microvm.BootSpec{ID: "jail-b", RunDir: shortTempDir(t), VCPUs: 1, MemoryMB: 128, Stderr: &outB})
	if err != nil {
		t.Fatalf("Restore: %v\n%s", err, outB.String())
	}
	echo(t, ctx, m2, "again", "jail-b")
	m2.Kill()
	if _, err := os.Lstat(filepath.Join(base, "firecracker", "jail-b")); !os.IsNotExist(err) {
		t.Fatalf("restored jail left after Kill: %v", err)
	}
	if s := out.String() + outB.String(); strings.Contains(s, "VIOLATION") {
		t.Fatalf("spec violations:\n%s", s)
	}
}

// An image drive (a tool's root) goes through the drives API after the root drive, read-only,
// against the spec-checked fake; in a jail it is a copy only the jailed uid may read.
func TestDriverImageDrive(t *testing.T) {
	kernel, initrd, root := guestFiles(t)
	image := filepath.Join(t.TempDir(), "image.ext4")
	if err := os.WriteFile(image, []byte("ext4 image"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	t.Run("plain", func(t *testing.T) {
		d := New(Config{Binary: fakeBinary(t, "firecracker")})
		var out syncBuffer
		m, err := d.Boot(ctx, microvm.BootSpec{ID: "img-a", RunDir: shortTempDir(t), Kernel: kernel, Initrd: initrd, RootDrive: root,
			ImageDrive: image, VCPUs: 1, MemoryMB: 128, Stderr: &out})
		if err != nil {
			t.Fatalf("Boot: %v\n%s", err, out.String())
		}
		m.Kill()
		reqs, bodies := fakeRequests(out.String())
		i := slices.Index(reqs, "PUT /drives/image")
		if i < 0 || i < slices.Index(reqs, "PUT /drives/root") || slices.Index(reqs, "PUT /actions") < i {
			t.Fatalf("requests %v: want the image drive after the root drive, before the start", reqs)
		}
		for _, w := range []string{`"drive_id":"image"`, `"is_read_only":true`, `"is_root_device":false`, `"path_on_host":"` + image} {
			if !strings.Contains(bodies[i], w) {
				t.Errorf("image drive body %s lacks %s", bodies[i], w)
			}
		}
		if strings.Contains(out.String(), "VIOLATION") {
			t.Fatalf("spec violations:\n%s", out.String())
		}
	})
	t.Run("jailed", func(t *testing.T) {
		fc := fakeBinary(t, "firecracker")
		base := shortTempDir(t)
		d := New(Config{Jailer: &Jailer{Binary: fakeBinary(t, "jailer"), ExecFile: fc, UID: os.Getuid(), GID: os.Getgid(), ChrootBaseDir: base}})
		var out syncBuffer
		m, err := d.Boot(ctx, microvm.BootSpec{ID: "img-j", RunDir: shortTempDir(t), Kernel: kernel, Initrd: initrd, RootDrive: root,
			ImageDrive: image, VCPUs: 1, MemoryMB: 128, Stderr: &out})
		if err != nil {
			t.Fatalf("Boot: %v\n%s", err, out.String())
		}
		defer m.Kill()
		fi, err := os.Stat(filepath.Join(base, "firecracker", "img-j", "root", "image.ext4"))
		if err != nil || fi.Mode().Perm() != 0o400 {
			t.Fatalf("jailed image: %v, mode %v; want a 0400 copy", err, fi.Mode())
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Getuid() {
			t.Errorf("jailed image owned by %d, want the jail uid %d", st.Uid, os.Getuid())
		}
		_, bodies := fakeRequests(out.String())
		if !strings.Contains(strings.Join(bodies, "\n"), `"path_on_host":"/image.ext4"`) {
			t.Errorf("jailed requests lack the jail's image path: %v", bodies)
		}
		if strings.Contains(out.String(), "VIOLATION") {
			t.Fatalf("spec violations:\n%s", out.String())
		}
	})
}

// TestNewCopiesTheJailer: a driver's settings are fixed at New; the caller's Jailer is its own.
func TestNewCopiesTheJailer(t *testing.T) {
	j := &Jailer{Binary: "/usr/bin/jailer", ExecFile: "/usr/bin/firecracker", ChrootBaseDir: "/srv/jailer"}
	d := New(Config{Jailer: j})
	j.ChrootBaseDir = "relative"
	if d.opts.Jailer == j || d.opts.Jailer.ChrootBaseDir != "/srv/jailer" {
		t.Fatalf("the driver's jailer changed with the caller's: %+v", d.opts.Jailer)
	}
}
