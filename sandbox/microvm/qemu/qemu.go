// Package qemu is the QEMU -M microvm backend of the microVM tier: KVM when /dev/kvm is usable,
// TCG (software emulation) otherwise. The agent's channel is a second 16550 UART (or, with
// Driver.VirtioConsole, a virtio-console port) whose chardev is a unix socket the host listens on;
// QMP, also over a socket the host listens on, pauses, snapshots and resumes.
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
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// Driver boots VMs with qemu-system-x86_64. The zero value is not usable: use New.
type Driver struct {
	// Binary is the QEMU executable.
	Binary string
	// KVM selects hardware acceleration.
	KVM bool
	// VirtioConsole puts the agent's channel on a virtio-console port (the agent loads
	// virtio_mmio and virtio_console) instead of the second 16550 UART. Measured under TCG with
	// the Debian kernel: the same cold-call cost (a module load instead of UART FIFO timeouts).
	// It is the channel a guest booted without ACPI (-M microvm,acpi=off) would need, where the
	// UART gets no interrupts; but then the kernel finds its virtio-mmio devices only through
	// virtio_mmio.device= arguments, which Debian's kernel (no VIRTIO_MMIO_CMDLINE_DEVICES)
	// rejects, so this driver keeps ACPI on either way.
	VirtioConsole bool
}

// New returns a TCG driver for the QEMU binary found in PATH.
//
// KVM is opt-in (NewKVM, or KVM: true): on the machines this was built on /dev/kvm exists and opens
// but is unusable (QEMU aborts setting MSR 0x10a with -cpu host and hangs with -cpu qemu64), so its
// mere presence proves nothing.
func New() *Driver { return &Driver{Binary: "qemu-system-x86_64"} }

// NewKVM returns a KVM driver when /dev/kvm opens read-write, else a TCG one.
func NewKVM() *Driver {
	d := New()
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		d.KVM = true
	}
	return d
}

var (
	_ microvm.Driver      = (*Driver)(nil)
	_ microvm.Snapshotter = (*Driver)(nil)
)

func (d *Driver) Name() string {
	if d.KVM {
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
	if d.VirtioConsole {
		return virtioPort
	}
	return "ttyS1"
}

func (d *Driver) Probe(ctx context.Context) isolation.Availability {
	a := isolation.Availability{Backend: d.Name()}
	if _, err := exec.LookPath(d.Binary); err != nil {
		a.Reason = d.Binary + " not found"
		a.Fix = "apt-get install qemu-system-x86"
		return a
	}
	a.Available = true
	return a
}

func (d *Driver) args(spec microvm.BootSpec, chanSock, qmpSock string) []string {
	accel := "tcg"
	cpu := "qemu64"
	if d.KVM {
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
	if d.VirtioConsole {
		cmdline += " 8250.nr_uarts=1"
		agent = []string{
			"-device", "virtio-serial-device,max_ports=2",
			"-device", "virtserialport,chardev=agent,nr=1,name=axocoatl.0",
		}
	} else {
		cmdline += " 8250.nr_uarts=2"
		agent = []string{"-device", "isa-serial,iobase=0x2f8,irq=3,chardev=agent"}
	}
	if !d.KVM {
		cmdline += tcgCmdline()
	}
	args := []string{
		"-name", spec.ID,
		"-M", machine,
		"-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(spec.MemoryMB), "-smp", strconv.Itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
		"-kernel", spec.Kernel, "-initrd", spec.Initrd, "-append", cmdline,
		"-serial", console,
		"-chardev", "socket,id=agent,path=" + chanSock,
	}
	args = append(args, agent...)
	args = append(args,
		"-chardev", "socket,id=qmp,path="+qmpSock,
		"-mon", "chardev=qmp,mode=control")
	if spec.RootDrive != "" {
		// A virtio-mmio disk: the guest sees it as /dev/vda once virtio_blk is loaded.
		args = append(args,
			"-drive", "id=root,file="+spec.RootDrive+",format=raw,if=none,readonly=on",
			"-device", "virtio-blk-device,drive=root")
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
	return d.start(ctx, spec, "")
}

func (d *Driver) start(ctx context.Context, spec microvm.BootSpec, incoming string) (*Machine, error) {
	if spec.Initrd == "" {
		return nil, errors.New("qemu: the microvm backend boots an initramfs; BootSpec.Initrd is empty")
	}
	if strings.ContainsAny(spec.RunDir+spec.Kernel+spec.Initrd+spec.RootDrive+incoming, ",\n") {
		return nil, fmt.Errorf("qemu: a path contains ',' or a newline")
	}
	m := &Machine{done: make(chan struct{}), runDir: spec.RunDir}
	var err error
	chanSock := filepath.Join(spec.RunDir, "chan.sock")
	qmpSock := filepath.Join(spec.RunDir, "qmp.sock")
	if m.chanL, err = net.ListenUnix("unix", &net.UnixAddr{Name: chanSock, Net: "unix"}); err != nil {
		return nil, err
	}
	if m.qmpL, err = net.ListenUnix("unix", &net.UnixAddr{Name: qmpSock, Net: "unix"}); err != nil {
		m.chanL.Close()
		return nil, err
	}
	args := d.args(spec, chanSock, qmpSock)
	if incoming != "" {
		args = append(args, "-incoming", "exec:cat "+incoming)
	}
	cmd := exec.Command(d.Binary, args...)
	cmd.Stdin = nil
	if spec.Stderr != nil {
		cmd.Stdout, cmd.Stderr = spec.Stderr, spec.Stderr
	}
	// Pdeathsig: a crashed host takes its VMs along; Setpgid keeps terminal signals away.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		m.chanL.Close()
		m.qmpL.Close()
		return nil, fmt.Errorf("qemu: %w", err)
	}
	m.cmd = cmd
	_ = os.WriteFile(filepath.Join(spec.RunDir, "vmm.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
	go func() {
		m.waitErr = cmd.Wait()
		close(m.done)
	}()
	return m, nil
}

// Snapshot pauses m and writes its migration stream to dir/state.
func (d *Driver) Snapshot(ctx context.Context, mm microvm.Machine, dir string) (microvm.Snapshot, error) {
	m, ok := mm.(*Machine)
	if !ok {
		return microvm.Snapshot{}, fmt.Errorf("qemu: cannot snapshot a %T", mm)
	}
	state := filepath.Join(dir, "state")
	if strings.ContainsAny(state, ",\n'\"\\ ") {
		return microvm.Snapshot{}, fmt.Errorf("qemu: snapshot path %q has characters the exec: URI cannot carry", state)
	}
	q, err := m.qmp(ctx)
	if err != nil {
		return microvm.Snapshot{}, err
	}
	if _, err := q.do(ctx, "stop", nil); err != nil {
		return microvm.Snapshot{}, err
	}
	if _, err := q.do(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return microvm.Snapshot{}, err
	}
	if _, err := q.do(ctx, "migrate", map[string]any{"uri": "exec:cat > " + state}); err != nil {
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

// Restore starts QEMU with -incoming from snap and resumes the guest once loaded.
func (d *Driver) Restore(ctx context.Context, snap microvm.Snapshot, spec microvm.BootSpec) (microvm.Machine, error) {
	if strings.ContainsAny(snap.State, ",\n'\"\\ ") {
		return nil, fmt.Errorf("qemu: snapshot path %q has characters the exec: URI cannot carry", snap.State)
	}
	m, err := d.start(ctx, spec, snap.State)
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
	chanL  *net.UnixListener
	qmpL   *net.UnixListener
	done   chan struct{}
	// waitErr is written before done is closed.
	waitErr error

	mu       sync.Mutex // protects conn, qmpConn, killed
	conn     net.Conn
	qmpConn  *qmpClient
	killed   bool
	killOnce sync.Once
}

func (m *Machine) PID() int { return m.cmd.Process.Pid }

func (m *Machine) Done() <-chan struct{} { return m.done }

// accept accepts the one connection QEMU makes to l, giving up when ctx ends or QEMU exits.
func (m *Machine) accept(ctx context.Context, l *net.UnixListener) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		l.SetDeadline(time.Now())
		if r := <-ch; r.c != nil {
			r.c.Close()
		}
		return nil, ctx.Err()
	case <-m.done:
		l.SetDeadline(time.Now())
		if r := <-ch; r.c != nil {
			return r.c, nil // QEMU connected, then died: the reader will see EOF
		}
		return nil, fmt.Errorf("qemu exited before connecting: %v", m.waitErr)
	}
}

func (m *Machine) Channel(ctx context.Context) (io.ReadWriteCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.killed {
		return nil, errors.New("qemu: machine killed")
	}
	if m.conn != nil {
		return m.conn, nil
	}
	c, err := m.accept(ctx, m.chanL)
	if err != nil {
		return nil, err
	}
	m.conn = c
	return c, nil
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
	c, err := m.accept(ctx, m.qmpL)
	if err != nil {
		return nil, err
	}
	q := &qmpClient{c: c, r: bufio.NewReader(c)}
	if err := q.handshake(ctx); err != nil {
		c.Close()
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
		if m.conn != nil {
			m.conn.Close()
		}
		if m.qmpConn != nil {
			m.qmpConn.c.Close()
		}
		m.mu.Unlock()
		m.chanL.Close()
		m.qmpL.Close()
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
	if _, err := q.c.Write(append(b, '\n')); err != nil {
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
