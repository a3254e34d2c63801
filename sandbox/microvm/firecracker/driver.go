// Package firecracker is the Firecracker backend of the microVM tier: process management with an
// optional jailer, the vsock CONNECT/OK handshake, and a Machine that boots, snapshots, restores
// and destroys one microVM through Firecracker's API.
//
// Firecracker needs /dev/kvm; Probe says why it is unavailable and how to fix it.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/axocoatl/isolation/sandbox/microvm/firecracker/internal/fcapi"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/callnet"
	"github.com/axocoatl/isolation/sandbox/microvm"
)

// Backend is the name the driver reports (Outcome.Backend, Availability.Backend).
const Backend = "firecracker"

// Defaults of the driver's options.
const (
	// DefaultAgentPort is the guest vsock port the agent listens on.
	DefaultAgentPort = 1024
	// DefaultGuestCID is the guest's vsock context id (3 is the first one not reserved).
	DefaultGuestCID = 3
	// KVMDevice is what Firecracker needs read-write.
	KVMDevice = "/dev/kvm"
)

// baseCmdline is Firecracker's recommended command line (no PCI: devices are virtio-mmio, listed
// by Firecracker on the command line; reboot=k makes a guest reboot end the VMM) plus the
// measured speed-ups of microvm.BaseCmdline that are not QEMU-specific.
const baseCmdline = "quiet console=ttyS0 reboot=k panic=-1 pci=off cryptomgr.notests nokaslr mitigations=off audit=0 rdinit=/init"

// Config configures a Driver. The zero value uses "firecracker" from PATH without the jailer.
type Config struct {
	// Binary is the firecracker executable; "" looks it up in PATH at Probe/Boot time.
	Binary string
	// Jailer, when set, runs every VMM through the jailer (its ExecFile replaces Binary).
	Jailer *Jailer
	// AgentPort is the guest vsock port of the agent (default DefaultAgentPort).
	AgentPort uint32
	// KVMDevice overrides /dev/kvm (tests).
	KVMDevice string
	// SocketTimeout bounds the wait for a new process's API socket (default 5 s).
	SocketTimeout time.Duration
	// Logger receives debug and warning logs (default slog.Default()).
	Logger *slog.Logger
}

// Driver is the Firecracker microvm.Driver and microvm.Snapshotter. Safe for concurrent use.
type Driver struct {
	opts Config
}

var (
	_ microvm.Driver      = (*Driver)(nil)
	_ microvm.Snapshotter = (*Driver)(nil)
)

// New returns a Driver. It does not touch the host: Probe does.
func New(opts Config) *Driver {
	if opts.AgentPort == 0 {
		opts.AgentPort = DefaultAgentPort
	}
	if opts.KVMDevice == "" {
		opts.KVMDevice = KVMDevice
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Jailer != nil {
		// A copy: what the caller does with its Jailer after New changes nothing.
		j := *opts.Jailer
		opts.Jailer = &j
	}
	return &Driver{opts: opts}
}

// Name implements microvm.Driver.
func (d *Driver) Name() string { return Backend }

// GuestChannel implements microvm.Driver: the agent listens on a vsock port.
func (d *Driver) GuestChannel() string {
	return "vsock:" + strconv.FormatUint(uint64(d.opts.AgentPort), 10)
}

// binary resolves the firecracker executable.
func (d *Driver) binary() (string, error) {
	if d.opts.Jailer != nil {
		return d.opts.Jailer.ExecFile, nil
	}
	if d.opts.Binary != "" {
		return d.opts.Binary, nil
	}
	return exec.LookPath("firecracker")
}

// Probe implements microvm.Driver: Firecracker needs /dev/kvm read-write and its binary (and the
// jailer's, when configured).
func (d *Driver) Probe(ctx context.Context) isolation.Availability {
	a := isolation.Availability{Backend: Backend}
	f, err := os.OpenFile(d.opts.KVMDevice, os.O_RDWR|syscall.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		a.Reason = d.opts.KVMDevice + " does not exist: this host has no KVM (no hardware virtualization, or nested virtualization is off)"
		a.Fix = "run on bare metal or a VM with nested virtualization enabled and load kvm_intel/kvm_amd (modprobe kvm_intel); QEMU microvm (TCG) is used meanwhile"
		return a
	case err != nil:
		a.Reason = fmt.Sprintf("cannot open %s read-write: %v", d.opts.KVMDevice, err)
		a.Fix = "add the user to the kvm group (usermod -aG kvm $USER) or grant rw access: setfacl -m u:$USER:rw " + d.opts.KVMDevice
		return a
	}
	kerr := checkKVM(f)
	f.Close()
	if kerr != nil {
		a.Reason = fmt.Sprintf("%s is not a working KVM device: %v", d.opts.KVMDevice, kerr)
		a.Fix = "load the kvm module for this CPU (modprobe kvm_intel / kvm_amd) and check dmesg"
		return a
	}
	if j := d.opts.Jailer; j != nil {
		if err := j.validate(); err != nil {
			a.Reason = err.Error()
			a.Fix = "fix the jailer configuration"
			return a
		}
	}
	bin, err := d.binary()
	if err != nil {
		a.Reason = "no firecracker binary: " + err.Error()
		a.Fix = "install Firecracker (https://github.com/firecracker-microvm/firecracker/releases) into PATH, or configure its path"
		return a
	}
	if err := executable(bin); err != nil {
		a.Reason = fmt.Sprintf("firecracker binary %s: %v", bin, err)
		a.Fix = "point the configuration at an executable firecracker binary"
		return a
	}
	if j := d.opts.Jailer; j != nil {
		jb := j.Binary
		if jb == "" {
			if jb, err = exec.LookPath("jailer"); err != nil {
				a.Reason = "jailer configured but not found: " + err.Error()
				a.Fix = "install the jailer from the Firecracker release next to firecracker, or disable it"
				return a
			}
		}
		if err := executable(jb); err != nil {
			a.Reason = fmt.Sprintf("jailer %s: %v", jb, err)
			a.Fix = "point the configuration at an executable jailer binary"
			return a
		}
	}
	a.Available = true
	return a
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// checkSpec refuses specs the driver cannot boot safely, before anything is started.
func checkSpec(spec microvm.BootSpec) error {
	if !validInstanceID(spec.ID) {
		return fmt.Errorf("firecracker: invalid vm id %q", spec.ID)
	}
	fi, err := os.Stat(spec.RunDir)
	if err != nil || !fi.IsDir() || !filepath.IsAbs(spec.RunDir) {
		return fmt.Errorf("firecracker: run dir %q is not an existing absolute directory", spec.RunDir)
	}
	if spec.VCPUs < 1 || spec.VCPUs > 32 {
		return fmt.Errorf("firecracker: %d vCPUs is outside 1..32", spec.VCPUs)
	}
	if spec.MemoryMB < 1 {
		return fmt.Errorf("firecracker: memory %d MiB is not positive", spec.MemoryMB)
	}
	return nil
}

func absFile(what, p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("firecracker: %s path %q is not absolute and clean", what, p)
	}
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("firecracker: %s: %w", what, err)
	}
	return nil
}

// Cmdline merges Firecracker's base command line with the caller's: a caller's key=value replaces
// the base's argument of the same key, so nothing is given twice.
func Cmdline(extra string) string {
	base := strings.Fields(baseCmdline)
	add := strings.Fields(extra)
	key := func(tok string) string { k, _, _ := strings.Cut(tok, "="); return k }
	override := make(map[string]string, len(add))
	for _, t := range add {
		override[key(t)] = t
	}
	out := make([]string, 0, len(base)+len(add))
	used := make(map[string]bool, len(add))
	for _, t := range base {
		if o, ok := override[key(t)]; ok {
			if !used[key(t)] {
				out = append(out, o)
				used[key(t)] = true
			}
			continue
		}
		out = append(out, t)
	}
	for _, t := range add {
		if !used[key(t)] {
			out = append(out, t)
		}
	}
	return strings.Join(out, " ")
}

// SupportsNIC implements microvm.NICDriver: Firecracker opens a VM's tap by name in its own
// network namespace, so it must start inside the call's, which only its jailer can do (--netns).
func (d *Driver) SupportsNIC() string {
	if d.opts.Jailer == nil {
		return "Firecracker joins a call's network namespace only through its jailer (--netns): configure vm.jailer"
	}
	return ""
}

// guestIface is the guest's network interface id in the API.
const guestIface = "eth0"

func (d *Driver) start(ctx context.Context, spec microvm.BootSpec) (*process, error) {
	bin, err := d.binary()
	if err != nil {
		return nil, fmt.Errorf("firecracker: %w", err)
	}
	netns := ""
	if spec.Net != nil {
		if why := d.SupportsNIC(); why != "" {
			return nil, errors.New("firecracker: " + why)
		}
		// The tap exists before Firecracker opens it by name (a jailed VMM may not create one)
		// and belongs to the jailed uid; callnet removes it when the namespace is recycled.
		if err := spec.Net.MakeTap(d.opts.Jailer.UID, d.opts.Jailer.GID); err != nil {
			return nil, fmt.Errorf("firecracker: %w", err)
		}
		netns = spec.Net.Path()
	}
	return startProcess(ctx, startConfig{
		Binary: bin, Jailer: d.opts.Jailer, ID: spec.ID, RunDir: spec.RunDir,
		Output: spec.Stderr, Log: d.opts.Logger, SocketTimeout: d.opts.SocketTimeout,
		MemoryMB: spec.MemoryMB, VCPUs: spec.VCPUs, Netns: netns,
	})
}

// vsockPaths returns the vsock socket as given to the API and as seen by the host.
func vsockPaths(p *process, runDir string) (api, host string, err error) {
	if p.root != "" {
		api = "/v.sock"
	} else {
		api = filepath.Join(runDir, "v.sock")
	}
	host = p.hostPath(api)
	if len(GuestSocketPath(host, 4294967295)) > maxUnixPath {
		return "", "", fmt.Errorf("firecracker: vsock path %s is too long for a unix socket", host)
	}
	return api, host, nil
}

// Boot implements microvm.Driver: it starts Firecracker, configures machine, boot source, the
// optional read-only root drive, vsock and an entropy device, and starts the instance.
func (d *Driver) Boot(ctx context.Context, spec microvm.BootSpec) (_ microvm.Machine, err error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if err := absFile("kernel", spec.Kernel); err != nil {
		return nil, err
	}
	if spec.Initrd != "" {
		if err := absFile("initrd", spec.Initrd); err != nil {
			return nil, err
		}
	}
	if spec.RootDrive != "" {
		if err := absFile("root drive", spec.RootDrive); err != nil {
			return nil, err
		}
	}
	if spec.ImageDrive != "" {
		if err := absFile("image drive", spec.ImageDrive); err != nil {
			return nil, err
		}
	}
	p, err := d.start(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.kill()
		}
	}()
	c := p.client
	if err := c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: spec.VCPUs, MemSizeMib: spec.MemoryMB}); err != nil {
		return nil, err
	}
	kernel, err := p.importFile(spec.Kernel, "vmlinux")
	if err != nil {
		return nil, err
	}
	bs := fcapi.BootSource{KernelImagePath: kernel, BootArgs: Cmdline(spec.Cmdline)}
	if spec.Initrd != "" {
		if bs.InitrdPath, err = p.importFile(spec.Initrd, "initrd"); err != nil {
			return nil, err
		}
	}
	if err := c.PutBootSource(ctx, bs); err != nil {
		return nil, err
	}
	if spec.RootDrive != "" {
		path, err := p.importFile(spec.RootDrive, "root.ext4")
		if err != nil {
			return nil, err
		}
		if err := c.PutDrive(ctx, fcapi.Drive{DriveID: "root", PathOnHost: path, IsReadOnly: true}); err != nil {
			return nil, err
		}
	}
	if spec.ImageDrive != "" {
		// A tool's root: read-only, found by the agent by its ext4 label.
		path, err := p.importPrivateFile(spec.ImageDrive, "image.ext4")
		if err != nil {
			return nil, err
		}
		if err := c.PutDrive(ctx, fcapi.Drive{DriveID: "image", PathOnHost: path, IsReadOnly: true}); err != nil {
			return nil, err
		}
	}
	vsAPI, vsHost, err := vsockPaths(p, spec.RunDir)
	if err != nil {
		return nil, err
	}
	if err := c.PutVsock(ctx, fcapi.Vsock{GuestCID: DefaultGuestCID, UDSPath: vsAPI}); err != nil {
		return nil, err
	}
	if err := c.PutEntropy(ctx, fcapi.EntropyDevice{}); err != nil {
		return nil, err
	}
	if spec.Net != nil {
		// The snapshot of this VM names the same tap, which every call's namespace has.
		if err := c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: guestIface, HostDevName: callnet.TapName, GuestMAC: microvm.GuestMAC}); err != nil {
			return nil, err
		}
	}
	if err := c.Action(ctx, fcapi.ActionInstanceStart); err != nil {
		return nil, err
	}
	d.opts.Logger.Debug("firecracker vm started", "id", spec.ID, "pid", p.cmd.Process.Pid)
	return newMachine(p, vsHost, d.opts.AgentPort), nil
}

// Snapshot implements microvm.Snapshotter: pause m and write a full snapshot into dir.
func (d *Driver) Snapshot(ctx context.Context, mm microvm.Machine, dir string) (microvm.Snapshot, error) {
	m, ok := mm.(*Machine)
	if !ok {
		return microvm.Snapshot{}, fmt.Errorf("firecracker: cannot snapshot a %T", mm)
	}
	if !filepath.IsAbs(dir) {
		return microvm.Snapshot{}, fmt.Errorf("firecracker: snapshot dir %q is not absolute", dir)
	}
	snap := microvm.Snapshot{Dir: dir, State: filepath.Join(dir, "vmstate"), Memory: filepath.Join(dir, "memory")}
	if err := m.p.client.SetVMState(ctx, fcapi.VMPaused); err != nil {
		return microvm.Snapshot{}, err
	}
	// The host end of the channel is dead after a snapshot: close it so nobody writes into it.
	m.closeChannel()
	state, mem := snap.State, snap.Memory
	if m.p.root != "" {
		state, mem = "/vmstate", "/memory"
	}
	if err := m.p.client.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotPath: state, MemFilePath: mem, SnapshotType: fcapi.SnapshotFull}); err != nil {
		return microvm.Snapshot{}, err
	}
	if m.p.root != "" {
		for _, mv := range [][2]string{{m.p.hostPath(state), snap.State}, {m.p.hostPath(mem), snap.Memory}} {
			if err := moveFile(mv[0], mv[1]); err != nil {
				return microvm.Snapshot{}, fmt.Errorf("firecracker: move snapshot out of the jail: %w", err)
			}
		}
	}
	return snap, nil
}

func moveFile(src, dst string) error {
	if err := os.Rename(src, dst); err == nil {
		return nil
	}
	if err := copyFile(src, dst); err != nil {
		return err
	}
	return os.Remove(src)
}

// Restore implements microvm.Snapshotter: a fresh Firecracker process loads snap with its memory
// file, its vsock moved to spec.RunDir, and resumes.
func (d *Driver) Restore(ctx context.Context, snap microvm.Snapshot, spec microvm.BootSpec) (_ microvm.Machine, err error) {
	if err := checkSpec(spec); err != nil {
		return nil, err
	}
	if err := absFile("snapshot state", snap.State); err != nil {
		return nil, err
	}
	if err := absFile("snapshot memory", snap.Memory); err != nil {
		return nil, err
	}
	p, err := d.start(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.kill()
		}
	}()
	state, err := p.importFile(snap.State, "vmstate")
	if err != nil {
		return nil, err
	}
	mem, err := p.importFile(snap.Memory, "memory")
	if err != nil {
		return nil, err
	}
	// The snapshot names its drives by the paths Boot gave them: in a jail, the same names.
	if spec.RootDrive != "" {
		if _, err := p.importFile(spec.RootDrive, "root.ext4"); err != nil {
			return nil, err
		}
	}
	if spec.ImageDrive != "" {
		if _, err := p.importPrivateFile(spec.ImageDrive, "image.ext4"); err != nil {
			return nil, err
		}
	}
	vsAPI, vsHost, err := vsockPaths(p, spec.RunDir)
	if err != nil {
		return nil, err
	}
	if err := p.client.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{
		SnapshotPath:  state,
		MemBackend:    fcapi.MemoryBackend{BackendType: fcapi.MemoryBackendFile, BackendPath: mem},
		VsockOverride: &fcapi.VsockOverride{UDSPath: vsAPI},
		ResumeVM:      true,
	}); err != nil {
		return nil, err
	}
	return newMachine(p, vsHost, d.opts.AgentPort), nil
}

// Machine is one Firecracker microVM (microvm.Machine). Kill is idempotent and safe to call
// concurrently with every other method.
type Machine struct {
	p    *process
	uds  string // host path of the vsock socket
	port uint32

	mu     sync.Mutex // protects ch and killed; held while the channel is dialed
	ch     net.Conn
	killed bool
}

func newMachine(p *process, uds string, port uint32) *Machine {
	return &Machine{p: p, uds: uds, port: port}
}

// VsockPath returns the host path of the machine's vsock socket.
func (m *Machine) VsockPath() string { return m.uds }

// PID implements microvm.Machine.
func (m *Machine) PID() int { return m.p.cmd.Process.Pid }

// Done implements microvm.Machine.
func (m *Machine) Done() <-chan struct{} { return m.p.done }

// Channel implements microvm.Machine: it dials the agent's vsock port, retrying while the agent is
// not yet listening (Firecracker closes a CONNECT to a port nobody listens on), until ctx ends or
// the VMM exits.
func (m *Machine) Channel(ctx context.Context) (io.ReadWriteCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.killed {
		return nil, errors.New("firecracker: machine was killed")
	}
	if m.ch != nil {
		return m.ch, nil
	}
	delay := 2 * time.Millisecond
	for {
		conn, err := DialVsock(ctx, m.uds, m.port, time.Second)
		if err == nil {
			m.ch = conn
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("firecracker: agent channel: %w", ctx.Err())
		}
		select {
		case <-m.p.done:
			return nil, fmt.Errorf("firecracker: VMM exited before the agent listened (%v): %w", m.p.waitErr, err)
		case <-ctx.Done():
			return nil, fmt.Errorf("firecracker: agent channel: %w (last: %v)", ctx.Err(), err)
		case <-time.After(delay):
		}
		if delay < 50*time.Millisecond {
			delay *= 2
		}
	}
}

func (m *Machine) closeChannel() {
	m.mu.Lock()
	if m.ch != nil {
		m.ch.Close()
		m.ch = nil
	}
	m.mu.Unlock()
}

// Kill implements microvm.Machine: SIGKILL, wait, close the channel and remove the API and vsock
// sockets (and the jail). Idempotent.
func (m *Machine) Kill() error {
	// Kill the process first, without the lock: a Channel call holding it is then unblocked by
	// done.
	err := m.p.kill()
	m.mu.Lock()
	m.killed = true
	if m.ch != nil {
		m.ch.Close()
		m.ch = nil
	}
	m.mu.Unlock()
	os.Remove(m.uds)
	return err
}
