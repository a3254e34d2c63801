// Package qemu is the QEMU -M microvm backend of the microVM tier: KVM when /dev/kvm is usable,
// TCG (software emulation) otherwise. The agent's channel is a second 16550 UART (or, with
// Driver.VirtioConsole, a virtio-console port) whose chardev is one end of a socket pair QEMU
// inherits; QMP, over another socket pair, pauses, snapshots and resumes.
package qemu

import (
	"bufio"
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
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/spawn"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// Config configures a Driver.
type Config struct {
	// Binary is the QEMU executable (default: qemu-system-x86_64 from PATH).
	Binary string
	// KVM selects hardware acceleration (see KVMUsable); off, QEMU emulates the CPU (TCG).
	KVM bool
	// VirtioConsole puts the agent's channel on a virtio-console port (the agent loads
	// virtio_mmio and virtio_console) instead of the second 16550 UART. Measured under TCG with
	// the Debian kernel: the same cold-call cost (a module load instead of UART FIFO timeouts).
	// It is the channel a guest booted without ACPI (-M microvm,acpi=off) would need, where the
	// UART gets no interrupts; but then the kernel finds its virtio-mmio devices only through
	// virtio_mmio.device= arguments, which Debian's kernel (no VIRTIO_MMIO_CMDLINE_DEVICES)
	// rejects, so this driver keeps ACPI on either way.
	VirtioConsole bool
	// RunAsRoot keeps QEMU as root with every capability, as this driver once ran it (debugging
	// only). By default a daemon running as root starts each QEMU directly as an unprivileged
	// uid and gid of its own (UIDBase + a slot), with no capabilities and no supplementary group
	// but kvm's when KVM is on. QEMU needs no file of the run dir: its channels are socket pairs
	// it inherits, snapshots go through descriptors, and the guest image is world-readable.
	RunAsRoot bool
	// UIDBase is the first uid (and gid) of the range VMMs run as; DefaultUIDBase when 0. Live
	// VMMs never share one, so a compromised QEMU cannot signal or ptrace another VM's.
	UIDBase uint32
	// NoCgroup leaves QEMU in the daemon's cgroups. By default each QEMU started by a root daemon
	// runs in a cgroup of its own under the daemon's (axocoatl-vm-<name>) limiting its memory to
	// the guest's RAM plus VMMOverheadMB, its tasks to vmmPids and its CPU to one core per vCPU
	// plus one for QEMU's own threads (and weighing as much as that many tasks).
	NoCgroup bool
	// VMMOverheadMB is the memory the VMM may use beyond guest RAM (DefaultTCGOverheadMB or
	// DefaultKVMOverheadMB when 0).
	VMMOverheadMB int
}

// Driver boots VMs with qemu-system-x86_64. Make one with New.
type Driver struct {
	cfg Config

	mu        sync.Mutex      // protects usedSlots, nextSlot
	usedSlots map[uint32]bool // uid slots of live VMMs
	nextSlot  uint32
}

// Least-privilege defaults.
const (
	// DefaultUIDBase is above the ranges Debian and systemd hand out to users, dynamic users and
	// containers (systemd's container range ends at 0x6FFFFFFF).
	DefaultUIDBase = 0x71000000
	// uidSlots is the size of the uid range: at most this many VMMs live at once.
	uidSlots = 1 << 16
	// DefaultTCGOverheadMB is QEMU's own memory beyond guest RAM under TCG: the translated-code
	// cache (bounded with tb-size) and QEMU's heap.
	DefaultTCGOverheadMB = 256
	// DefaultKVMOverheadMB: without translation QEMU itself needs far less.
	DefaultKVMOverheadMB = 128
	// tcgCacheMB bounds TCG's translated-code cache (QEMU's default is 1 GiB of address space).
	tcgCacheMB = 128
	// vmmPids bounds QEMU's threads (vCPUs, the main loop, RCU, the block layer's worker pool).
	vmmPids = 128
	// sandboxArg is QEMU's own seccomp filter: no obsolete system calls, no setuid, no fork or
	// exec, no scheduler or resource-limit changes.
	sandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
)

// New returns a driver. KVM is opt-in (cfg.KVM): on the machines this was built on /dev/kvm
// exists and opens but is unusable (QEMU aborts setting MSR 0x10a with -cpu host and hangs with
// -cpu qemu64), so its mere presence proves nothing.
func New(cfg Config) *Driver {
	if cfg.Binary == "" {
		cfg.Binary = "qemu-system-x86_64"
	}
	return &Driver{cfg: cfg}
}

// KVMUsable reports whether /dev/kvm opens read-write: what the config's "kvm": "auto" asks of
// a host before it sets Config.KVM.
func KVMUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

var (
	_ microvm.Driver      = (*Driver)(nil)
	_ microvm.Snapshotter = (*Driver)(nil)
)

func (d *Driver) Name() string {
	if d.cfg.KVM {
		return "qemu-microvm-kvm"
	}
	return "qemu-microvm-tcg"
}

// virtioPort is the guest device of the agent's virtio-console port: the first port (nr 1; 0 is
// reserved for a console port, hence max_ports=2) of the first virtio-serial device. devtmpfs names it; the
// /dev/virtio-ports/<name> link would need udev.
const virtioPort = "vport0p1"

// GuestChannel implements microvm.Driver: "ttyS1", or "vport0p1" with VirtioConsole.
func (d *Driver) GuestChannel() string {
	if d.cfg.VirtioConsole {
		return virtioPort
	}
	return "ttyS1"
}

func (d *Driver) Probe(ctx context.Context) isolation.Availability {
	a := isolation.Availability{Backend: d.Name()}
	if unsupportedOS != "" {
		a.Reason, a.Fix = unsupportedOS, "run the microVM tier on Linux"
		return a
	}
	if _, err := exec.LookPath(d.cfg.Binary); err != nil {
		a.Reason = d.cfg.Binary + " not found"
		a.Fix = "apt-get install qemu-system-x86"
		return a
	}
	a.Available = true
	return a
}

// Descriptors QEMU inherits (exec.Cmd.ExtraFiles start at 3).
const (
	agentFD = 3
	qmpFD   = 4
	stateFD = 5 // the snapshot being restored
)

// imageFDSet is the -add-fd set of the image drive's descriptor.
const imageFDSet = 1

// SupportsNIC implements microvm.NICDriver: QEMU takes the call's tap by descriptor, so it
// needs neither a path to it nor to enter the namespace (its seccomp filter allows the tap's
// ioctls; it opens nothing).
func (d *Driver) SupportsNIC() string { return "" }

// args are QEMU's arguments; imageFD and tapFD are the descriptors QEMU inherits for
// spec.ImageDrive and spec.Net.
func (d *Driver) args(spec microvm.BootSpec, imageFD, tapFD int) []string {
	accel := "tcg,tb-size=" + strconv.Itoa(tcgCacheMB)
	cpu := "qemu64"
	if d.cfg.KVM {
		accel, cpu = "kvm", "host"
	}
	console := "null"
	if spec.Stderr != nil {
		console = "stdio"
	}
	cmdline := strings.TrimSpace(spec.Cmdline)
	// rtc=on: without a CMOS clock the kernel spins ~1 s (TCG) waiting for its update-in-progress
	// bit, once at time_init and again probing rtc_cmos. (acpi=off would save ~250 ms of TCG
	// time, but the agent's UART then gets no interrupts and the virtio-mmio devices are not
	// found: see VirtioConsole.)
	machine := "microvm,x-option-roms=off,rtc=on,isa-serial=on"
	var agent []string
	if d.cfg.VirtioConsole {
		cmdline += " 8250.nr_uarts=1"
		agent = []string{
			"-device", "virtio-serial-device,max_ports=2",
			"-device", "virtserialport,chardev=agent,nr=1,name=axocoatl.0",
		}
	} else {
		cmdline += " 8250.nr_uarts=2"
		agent = []string{"-device", "isa-serial,iobase=0x2f8,irq=3,chardev=agent"}
	}
	if !d.cfg.KVM {
		cmdline += tcgCmdline()
	}
	args := []string{
		// The name carries the run dir: an orphan reaper recognises its VMMs by it.
		"-name", spec.RunDir,
		"-sandbox", sandboxArg,
		"-M", machine,
		"-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(spec.MemoryMB), "-smp", strconv.Itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-kernel", spec.Kernel, "-initrd", spec.Initrd, "-append", cmdline,
		"-serial", console,
		"-chardev", "socket,id=agent,fd=" + strconv.Itoa(agentFD),
	}
	args = append(args, agent...)
	args = append(args,
		"-chardev", "socket,id=qmp,fd="+strconv.Itoa(qmpFD),
		"-mon", "chardev=qmp,mode=control")
	if spec.RootDrive != "" {
		// A virtio-mmio disk: the guest sees it as /dev/vda once virtio_blk is loaded.
		args = append(args,
			"-drive", "id=root,file="+spec.RootDrive+",format=raw,if=none,readonly=on",
			"-device", "virtio-blk-device,drive=root")
	}
	if spec.ImageDrive != "" {
		// A tool's root, by descriptor: the file is root's only and QEMU runs as a uid of its
		// own. The agent finds it by its ext4 label.
		args = append(args,
			"-add-fd", fmt.Sprintf("fd=%d,set=%d", imageFD, imageFDSet),
			"-drive", fmt.Sprintf("id=image,file=/dev/fdset/%d,format=raw,if=none,readonly=on", imageFDSet),
			"-device", "virtio-blk-device,drive=image")
	}
	if tapFD >= 0 {
		// The call's tap, by descriptor: no script (QEMU's filter forbids spawning one anyway),
		// no vhost (the guest's packets stay in QEMU's process, under its filter).
		args = append(args,
			"-netdev", fmt.Sprintf("tap,id=net0,fd=%d,vhost=off", tapFD),
			"-device", "virtio-net-device,netdev=net0,mac="+microvm.GuestMAC)
	}
	return args
}

// tcgCmdline returns kernel arguments that make guest time match the host's under TCG, where
// the guest's TSC is the host's: tsc_early_khz (the kernel cannot calibrate against the PIT under
// TCG and hangs without it) set to the host's TSC frequency, and lpj to match. It is appended
// after the Sandbox's command line, so it overrides the generic values there.
var tcgCmdline = sync.OnceValue(func() string {
	khz := hostTSCkHz()
	if khz <= 0 {
		return ""
	}
	// lpj is TSC cycles per jiffy; Debian's kernels run at HZ=250.
	// tsc=reliable: the TSC is the host's, steady; without it the kernel's watchdog may mark it
	// unstable and fall back to jiffies.
	return fmt.Sprintf(" tsc_early_khz=%d lpj=%d tsc=reliable clocksource=tsc", khz, khz*1000/250)
})

// hostTSCkHz reads the host's TSC frequency: the kernel's refined calibration when exported,
// else the "cpu MHz" of /proc/cpuinfo (the TSC rate on hosts with a constant TSC). 0 if unknown.
func hostTSCkHz() int64 {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			return v
		}
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	flags, mhz := "", 0.0
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "cpu MHz":
			if mhz == 0 {
				mhz, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		case "flags":
			if flags == "" {
				flags = v
			}
		}
	}
	if !strings.Contains(flags, " constant_tsc") || mhz < 100 {
		return 0
	}
	return int64(mhz * 1000)
}

// Boot starts QEMU; the agent's READY arrives on Channel.
func (d *Driver) Boot(ctx context.Context, spec microvm.BootSpec) (microvm.Machine, error) {
	return d.start(ctx, spec, nil)
}

func (d *Driver) start(ctx context.Context, spec microvm.BootSpec, incoming *os.File) (*Machine, error) {
	if spec.Initrd == "" {
		return nil, errors.New("qemu: the microvm backend boots an initramfs; BootSpec.Initrd is empty")
	}
	if strings.ContainsAny(spec.RunDir+spec.Kernel+spec.Initrd+spec.RootDrive+spec.ImageDrive, ",\n") {
		return nil, fmt.Errorf("qemu: a path contains ',' or a newline")
	}
	m := &Machine{done: make(chan struct{}), runDir: spec.RunDir}
	// The agent's channel and QMP are socket pairs: QEMU inherits one end of each and needs no
	// path to reach them.
	agentHost, agentVMM, err := socketPair()
	if err != nil {
		return nil, err
	}
	defer agentVMM.Close()
	qmpHost, qmpVMM, err := socketPair()
	if err != nil {
		agentHost.Close()
		return nil, err
	}
	defer qmpVMM.Close()
	fail := func(err error) (*Machine, error) {
		agentHost.Close()
		qmpHost.Close()
		m.release()
		return nil, err
	}
	extra := []*os.File{agentVMM, qmpVMM}
	if incoming != nil {
		extra = append(extra, incoming)
	}
	imageFD := -1
	if spec.ImageDrive != "" {
		f, err := os.OpenFile(spec.ImageDrive, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("qemu: image drive: %w", err))
		}
		defer f.Close()
		imageFD = 3 + len(extra)
		extra = append(extra, f)
	}
	tapFD := -1
	if spec.Net != nil {
		tap, err := spec.Net.OpenTap()
		if err != nil {
			return fail(fmt.Errorf("qemu: %w", err))
		}
		// QEMU holds its own copy: the tap goes when QEMU exits.
		defer tap.Close()
		tapFD = 3 + len(extra)
		extra = append(extra, tap)
	}
	args := d.args(spec, imageFD, tapFD)
	cmd := exec.Command(d.cfg.Binary, args...)
	cmd.ExtraFiles = extra
	if incoming != nil {
		cmd.Args = append(cmd.Args, "-incoming", "fd:"+strconv.Itoa(stateFD))
	}
	cmd.Stdin = nil
	if spec.Stderr != nil {
		cmd.Stdout, cmd.Stderr = spec.Stderr, spec.Stderr
	}
	attr := procAttr()
	if os.Geteuid() == 0 && !d.cfg.RunAsRoot {
		uid, release, err := d.takeSlot()
		if err != nil {
			return fail(err)
		}
		m.releaseSlot = release
		attr.Credential = &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}
		if d.cfg.KVM {
			if gid, ok := kvmGroup(); ok {
				attr.Credential.Groups = []uint32{gid}
			}
		}
		m.uid = int(uid)
	}
	if os.Geteuid() == 0 && !d.cfg.NoCgroup {
		over := d.cfg.VMMOverheadMB
		if over <= 0 {
			over = DefaultTCGOverheadMB
			if d.cfg.KVM {
				over = DefaultKVMOverheadMB
			}
		}
		cg, err := newCgroup(cgroupName(spec), cgroupLimits{
			MemoryBytes: int64(spec.MemoryMB+over) << 20,
			Pids:        vmmPids,
			CPUQuotaUS:  int64(spec.VCPUs+1) * cpuPeriodUS,
			CPUWeight:   spec.VCPUs + 1,
		})
		if err != nil {
			return fail(fmt.Errorf("qemu: %w", err))
		}
		m.cg = cg
		if f, err := cg.fd(); err != nil {
			return fail(fmt.Errorf("qemu: %w", err))
		} else if f != nil {
			defer f.Close()
			setCgroupFD(attr, int(f.Fd()))
		}
	}
	cmd.SysProcAttr = attr
	if err := spawn.Start(cmd); err != nil {
		return fail(fmt.Errorf("qemu: %w", err))
	}
	m.cmd = cmd
	_ = os.WriteFile(filepath.Join(spec.RunDir, "vmm.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
	go func() {
		m.waitErr = cmd.Wait()
		close(m.done)
	}()
	if m.cg != nil {
		// cgroup v1: moved in right after the start, long before the guest runs.
		if err := m.cg.add(cmd.Process.Pid); err != nil {
			agentHost.Close()
			qmpHost.Close()
			m.Kill()
			return nil, fmt.Errorf("qemu: %w", err)
		}
	}
	m.conn = agentHost
	m.qmpRaw = qmpHost
	return m, nil
}

// takeSlot reserves a uid no live VMM of this driver runs as.
func (d *Driver) takeSlot() (uint32, func(), error) {
	base := d.cfg.UIDBase
	if base == 0 {
		base = DefaultUIDBase
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.usedSlots == nil {
		d.usedSlots = map[uint32]bool{}
	}
	if len(d.usedSlots) >= uidSlots {
		return 0, nil, fmt.Errorf("qemu: %d VMMs already run (one uid each)", uidSlots)
	}
	for d.usedSlots[d.nextSlot] {
		d.nextSlot = (d.nextSlot + 1) % uidSlots
	}
	slot := d.nextSlot
	d.usedSlots[slot] = true
	d.nextSlot = (slot + 1) % uidSlots
	return base + slot, func() {
		d.mu.Lock()
		delete(d.usedSlots, slot)
		d.mu.Unlock()
	}, nil
}

// kvmGroup is the group owning /dev/kvm (QEMU needs it to open the device as its own uid).
func kvmGroup() (uint32, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat("/dev/kvm", &st); err != nil {
		return 0, false
	}
	return st.Gid, true
}

// cgroupName names a VMM's cgroup after its run dir's last two elements (this process's run dir,
// which no other process shares, and the VM id).
func cgroupName(spec microvm.BootSpec) string {
	return filepath.Base(filepath.Dir(spec.RunDir)) + "-" + filepath.Base(spec.RunDir)
}

// Snapshot pauses m and writes its migration stream to dir/state, through a descriptor QEMU
// receives over QMP (its seccomp filter forbids the "exec:" migration's fork, and it has no access
// to dir).
func (d *Driver) Snapshot(ctx context.Context, mm microvm.Machine, dir string) (microvm.Snapshot, error) {
	m, ok := mm.(*Machine)
	if !ok {
		return microvm.Snapshot{}, fmt.Errorf("qemu: cannot snapshot a %T", mm)
	}
	state := filepath.Join(dir, "state")
	q, err := m.qmp(ctx)
	if err != nil {
		return microvm.Snapshot{}, err
	}
	f, err := os.OpenFile(state, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return microvm.Snapshot{}, fmt.Errorf("qemu: %w", err)
	}
	defer f.Close()
	if _, err := q.do(ctx, "stop", nil); err != nil {
		return microvm.Snapshot{}, err
	}
	if _, err := q.do(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return microvm.Snapshot{}, err
	}
	if _, err := q.doFD(ctx, "getfd", map[string]any{"fdname": "snapshot"}, f); err != nil {
		return microvm.Snapshot{}, err
	}
	if _, err := q.do(ctx, "migrate", map[string]any{"uri": "fd:snapshot"}); err != nil {
		return microvm.Snapshot{}, err
	}
	for {
		r, err := q.do(ctx, "query-migrate", nil)
		if err != nil {
			return microvm.Snapshot{}, err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		_ = json.Unmarshal(r, &st)
		switch st.Status {
		case "completed":
			if err := f.Close(); err != nil {
				return microvm.Snapshot{}, fmt.Errorf("qemu: snapshot: %w", err)
			}
			return microvm.Snapshot{Dir: dir, State: state}, nil
		case "failed", "cancelled":
			return microvm.Snapshot{}, fmt.Errorf("qemu: migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return microvm.Snapshot{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Restore starts QEMU with -incoming from snap (an inherited descriptor) and resumes the guest
// once loaded.
func (d *Driver) Restore(ctx context.Context, snap microvm.Snapshot, spec microvm.BootSpec) (microvm.Machine, error) {
	f, err := os.Open(snap.State)
	if err != nil {
		return nil, fmt.Errorf("qemu: snapshot: %w", err)
	}
	m, err := d.start(ctx, spec, f)
	f.Close() // QEMU holds its own copy
	if err != nil {
		return nil, err
	}
	fail := func(err error) (microvm.Machine, error) {
		m.Kill()
		return nil, err
	}
	q, err := m.qmp(ctx)
	if err != nil {
		return fail(err)
	}
	for {
		r, err := q.do(ctx, "query-status", nil)
		if err != nil {
			return fail(err)
		}
		var st struct {
			Status string `json:"status"`
		}
		_ = json.Unmarshal(r, &st)
		if st.Status != "inmigrate" {
			break
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	if _, err := q.do(ctx, "cont", nil); err != nil {
		return fail(err)
	}
	return m, nil
}

// Machine is one QEMU process.
type Machine struct {
	cmd    *exec.Cmd
	runDir string
	uid    int       // the VMM's uid (0: as root)
	cg     *vmCgroup // nil: in the daemon's cgroups
	// releaseSlot frees the VMM's uid once it exited (nil: none taken).
	releaseSlot func()
	done        chan struct{}
	// waitErr is written before done is closed.
	waitErr error

	mu       sync.Mutex // protects conn, qmpRaw, qmpConn, killed
	conn     net.Conn   // the agent's channel
	qmpRaw   net.Conn   // QMP before its handshake
	qmpConn  *qmpClient
	killed   bool
	killOnce sync.Once
}

func (m *Machine) PID() int { return m.cmd.Process.Pid }

func (m *Machine) Done() <-chan struct{} { return m.done }

// UID is the uid the VMM runs as (0 when it runs as root).
func (m *Machine) UID() int { return m.uid }

// release frees the uid slot and the cgroup of a machine whose process is gone or never started.
func (m *Machine) release() {
	if m.cg != nil {
		m.cg.remove()
	}
	if m.releaseSlot != nil {
		m.releaseSlot()
	}
}

func (m *Machine) Channel(ctx context.Context) (io.ReadWriteCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.killed {
		return nil, errors.New("qemu: machine killed")
	}
	return m.conn, nil
}

func (m *Machine) qmp(ctx context.Context) (*qmpClient, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.killed {
		return nil, errors.New("qemu: machine killed")
	}
	if m.qmpConn != nil {
		return m.qmpConn, nil
	}
	q := &qmpClient{c: m.qmpRaw, r: bufio.NewReader(m.qmpRaw)}
	// QEMU greets once its monitor runs; if it died first the read ends with EOF.
	if err := q.handshake(ctx); err != nil {
		select {
		case <-m.done:
			return nil, fmt.Errorf("qemu exited before its monitor answered: %v", m.waitErr)
		default:
		}
		return nil, err
	}
	m.qmpConn = q
	return q, nil
}

// Kill stops QEMU with SIGKILL and waits for it. Idempotent.
func (m *Machine) Kill() error {
	m.killOnce.Do(func() {
		_ = m.cmd.Process.Kill()
		<-m.done
		m.mu.Lock()
		m.killed = true
		m.conn.Close()
		m.qmpRaw.Close()
		m.mu.Unlock()
		m.release()
	})
	return nil
}

// qmpClient speaks QMP: one command at a time, events skipped.
type qmpClient struct {
	mu sync.Mutex // serializes commands
	c  net.Conn
	r  *bufio.Reader
}

func (q *qmpClient) handshake(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		q.c.SetDeadline(dl)
		defer q.c.SetDeadline(time.Time{})
	}
	if _, err := q.r.ReadBytes('\n'); err != nil { // the greeting
		return fmt.Errorf("qmp greeting: %w", err)
	}
	_, err := q.do(ctx, "qmp_capabilities", nil)
	return err
}

func (q *qmpClient) do(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	return q.doFD(ctx, cmd, args, nil)
}

// doFD runs cmd, passing f's descriptor with it (SCM_RIGHTS) when f is not nil, as QMP's getfd
// expects.
func (q *qmpClient) doFD(ctx context.Context, cmd string, args any, f *os.File) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		q.c.SetDeadline(dl)
		defer q.c.SetDeadline(time.Time{})
	}
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	b = append(b, '\n')
	if f != nil {
		uc, ok := q.c.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("qmp %s: cannot pass a descriptor over a %T", cmd, q.c)
		}
		if _, _, err := uc.WriteMsgUnix(b, syscall.UnixRights(int(f.Fd())), nil); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
	} else if _, err := q.c.Write(b); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var r struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		switch {
		case r.Event != "":
			continue
		case r.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, r.Error.Class, r.Error.Desc)
		default:
			return r.Return, nil
		}
	}
}
