package microvm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/callio"
	"github.com/axocoatl/isolation/internal/callnet"
	"github.com/axocoatl/isolation/internal/guest"
	"github.com/axocoatl/isolation/internal/keeper"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/internal/poolbudget"
	"github.com/axocoatl/isolation/sandbox/microvm/internal/rootdrive"
	"github.com/axocoatl/isolation/sandbox/microvm/internal/vmimage"
)

// The optional interfaces of package sandbox this tier has.
var (
	_ sandbox.Setupper        = (*Sandbox)(nil)
	_ sandbox.Preparer        = (*Sandbox)(nil)
	_ sandbox.MemoryDefaulter = (*Sandbox)(nil)
	_ sandbox.Pooler          = (*Sandbox)(nil)
	_ sandbox.BaseSupporter   = (*Sandbox)(nil)
	_ sandbox.EgressSupporter = (*Sandbox)(nil)
)

// Defaults and bounds.
const (
	DefaultMemoryMB = 256
	// MinMemoryMB: the kernel reserves ~45 MB plus the initramfs (~35 MB) and then needs as much
	// again to unpack it; at 128 MB the unpacking fails for want of memory and the root lacks files.
	MinMemoryMB = 192
	// MinMemoryMBDriveRoot is the floor when VMs boot from the root drive (nothing to unpack).
	MinMemoryMBDriveRoot = 128
	DefaultRunDir        = "/run/axocoatl/vm"
	// MaxToolBytes bounds the tool folder sent over the channel.
	MaxToolBytes = 8 << 20
	// bootTimeout bounds a boot or restore to READY.
	bootTimeout = 60 * time.Second
	// pooledRetryWindow: a pooled VM whose VMM is found dead within this time of sending the
	// request was dead (or dying) when taken, and the call is retried in a fresh VM.
	pooledRetryWindow = 100 * time.Millisecond
	// responseGrace is how long past the tool's timeout the host waits for the agent's answer
	// before it kills the VM itself.
	responseGrace = 3 * time.Second
)

// Config configures a Sandbox.
type Config struct {
	// Drivers are the VMM backends in order of preference (Firecracker first, then QEMU); the
	// first whose Probe says Available is used.
	Drivers []Driver
	// DataDir holds the prepared guest image (DefaultDataDir when ""; see Prepare).
	DataDir string
	// RunDir is the parent of per-process run directories (DefaultRunDir when "").
	RunDir string
	// VCPUs per VM (1 when 0).
	VCPUs int
	// PoolSize is the number of booted VMs kept waiting at READY per VM shape (vCPUs, memory),
	// refilled in the background. 0 disables the pool.
	PoolSize int
	// WarmPool has each pooled VM start the guest's Python once before it waits, so that a Python tool served from the pool skips the interpreter's cold
	// first start (measured under TCG: tool time ~530 → ~340 ms in two runs, no gain in a third
	// on a loaded host), at ~1 s of background CPU and ~33 MiB more RSS per pooled VM. Off by
	// default: on a 2-core host that background CPU competes with calls.
	WarmPool bool
	// PoolIdle: a VM shape unused for this long has its pool drained and its snapshot removed
	// (DefaultPoolIdle when 0; never when negative).
	PoolIdle time.Duration
	// MaxShapes bounds the VM shapes (vCPUs, memory) with a pool or a snapshot; using one more
	// drops the least recently used (DefaultMaxShapes when 0).
	MaxShapes int
	// PoolMaxTotal bounds the pooled VMs (ready or booting for a pool) of all shapes together,
	// PoolMaxMemoryMB the sum of their guest memory; shared fairly between the shapes, the least
	// recently used shape's pool giving up a VM first (DefaultPoolMaxTotal and
	// DefaultPoolMaxMemoryMB when 0; no bound when negative).
	PoolMaxTotal    int
	PoolMaxMemoryMB int
	// Snapshots takes one snapshot per shape at READY and starts later VMs (pool refills and
	// unpooled calls) by restoring it, when the driver is a Snapshotter.
	Snapshots bool
	// DriveDir caches the root drives of image tools (filepath.Join(DataDir, "drives") when "");
	// DriveCacheBytes caps their total size (4 GiB when 0; no cap when negative).
	DriveDir        string
	DriveCacheBytes int64
	// ExtraCmdline is appended to the guest kernel command line (tuning; a later parameter
	// overrides an earlier one).
	ExtraCmdline string
	// Gate is the egress gate of calls with a network policy (sandbox.Limits.Egress): each such
	// call runs in a VM with a NIC whose only way out is the gate (see egress.go). nil, not root,
	// or a host without nftables, veth or tap devices: such calls are refused
	// (isolation.ErrTierUnavailable, saying why). VMs of calls without one have no NIC.
	Gate *egress.Gate
	// NetPrefix is the IPv4 range of the per-call namespaces, a /31 each (default
	// callnet.DefaultPrefix). NetReady namespaces are kept prepared (default 2), at most NetMax
	// exist at once (default 256), pooled VMs with a NIC included.
	NetPrefix netip.Prefix
	NetReady  int
	NetMax    int
	// Logger receives the tier's logs (slog.Default when nil).
	Logger *slog.Logger
	// Debug, when non-nil, receives every VMM's stderr and guest console.
	Debug io.Writer

	// rootInInitramfs boots the whole guest root as the initramfs even when the image has a root
	// drive (PrepareConfig.Ext4), as images without one boot; tests and benchmarks set it (see
	// export_test.go). By default such an image boots its small initramfs and mounts the ext4
	// image read-only as the root: measured under TCG, ~0.2 s less CPU per cold boot (no 35 MB
	// to unpack), a snapshot and an idle VM ~70 MB smaller.
	rootInInitramfs bool
}

// Stats counts how VMs were started.
type Stats struct {
	Cold, Restored, Pooled int64
	// DeadPooled counts pooled VMs whose VMM was found dead before they served a call (they are
	// discarded and replaced, never handed out).
	DeadPooled int64
	// ToolMS sums the tools' own run times as the guests measured them.
	ToolMS int64
	// RunUS sums Run's wall time, from the call's arrival to its outcome (µs).
	RunUS int64
	// ExchangeUS sums the host's wall time from sending a request to decoding its response (µs).
	ExchangeUS int64
	// GuestUS sums the agents' own time per call, from the request's first bytes arriving to
	// the response being ready (µs, guest clock); ExchangeUS minus GuestUS is the channel's
	// latency and the response's transfer.
	GuestUS int64
	// RecvUS sums the time requests took to arrive in the guest, first byte to last (µs).
	RecvUS int64
}

// Sandbox is the microVM tier. Safe for concurrent use; Close is idempotent.
type Sandbox struct {
	opts   Config
	log    *slog.Logger
	runDir string // this process's private run dir
	// runLock holds a shared flock on runDir (nil outside Linux); keep is the keeper that reaps
	// runDir if this process dies (nil when it could not start). See reap_linux.go.
	runLock *os.File
	keep    *keeper.Keeper
	seq     atomic.Int64
	bg      sync.WaitGroup // background kills, refills, snapshots

	cold, restored, pooled atomic.Int64
	deadPooled             atomic.Int64
	toolMS                 atomic.Int64
	runUS, exchangeUS      atomic.Int64
	guestUS, recvUS        atomic.Int64

	budget *poolbudget.Budget // bounds the pooled VMs of all shapes together

	// driveOnce creates driveCache (or driveErr) on the first image call.
	driveOnce  sync.Once
	driveCache *rootdrive.Cache
	driveErr   error

	mu     sync.Mutex // protects closed, pools, snaps, used, held, driver, img
	closed bool
	// held holds the drive of every shape in used that has one, by digest.
	held   map[string]*rootdrive.Drive
	pools  map[shape]*pool
	snaps  map[shape]*snapEntry
	used   map[shape]time.Time // last use of each shape with a pool or snapshot
	driver Driver
	img    vmimage.Image
	ctx    context.Context // canceled by Close; parents background work
	cancel context.CancelFunc
	// net is the pool of namespaces for VMs with a NIC (egress.go), made on the first call with a
	// network policy.
	net callnet.Lazy
	// calls counts Runs in flight; Close waits for them before it stops anything, so every
	// destroyAsync of a call is added to bg before Close waits on bg. Add only under mu while
	// !closed.
	calls sync.WaitGroup
}

// shape is what VMs of a pool or snapshot share: vCPUs, memory, the image drive ("" for
// none; else its content digest) and whether they have a NIC (calls with a network policy).
type shape struct {
	vcpus, memMB int
	drive        string
	net          bool
}

func (s shape) String() string {
	n := ""
	if s.net {
		n = "-net"
	}
	if s.drive != "" {
		return fmt.Sprintf("vm-%dcpu-%dmb%s-image-%.12s", s.vcpus, s.memMB, n, s.drive)
	}
	return fmt.Sprintf("vm-%dcpu-%dmb%s", s.vcpus, s.memMB, n)
}

type snapEntry struct {
	once sync.Once
	done atomic.Bool // once ran: snap and err are set
	snap Snapshot
	err  error
}

// New returns the tier. It creates its run directory, starts the keeper that reaps it if this
// process dies without Close, and reaps what dead earlier processes left under Config.RunDir.
func New(opts Config) (*Sandbox, error) {
	if opts.DataDir == "" {
		opts.DataDir = vmimage.DefaultDataDir
	}
	if opts.RunDir == "" {
		opts.RunDir = DefaultRunDir
	}
	if opts.VCPUs <= 0 {
		opts.VCPUs = 1
	}
	if opts.PoolIdle == 0 {
		opts.PoolIdle = DefaultPoolIdle
	}
	if opts.MaxShapes <= 0 {
		opts.MaxShapes = DefaultMaxShapes
	}
	if opts.PoolMaxTotal == 0 {
		opts.PoolMaxTotal = DefaultPoolMaxTotal
	}
	if opts.PoolMaxMemoryMB == 0 {
		opts.PoolMaxMemoryMB = DefaultPoolMaxMemoryMB
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("tier", isolation.TierMicroVM.String())
	if err := os.MkdirAll(opts.RunDir, 0o700); err != nil {
		return nil, err
	}
	reapOrphans(opts.RunDir, log)
	dir, err := os.MkdirTemp(opts.RunDir, "p")
	if err != nil {
		return nil, err
	}
	lock, keep, err := claimRunDir(dir, log)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Sandbox{opts: opts, log: log, runDir: dir, runLock: lock, keep: keep, pools: map[shape]*pool{}, snaps: map[shape]*snapEntry{},
		used: map[shape]time.Time{}, held: map[string]*rootdrive.Drive{}, budget: poolbudget.New(opts.PoolMaxTotal, opts.PoolMaxMemoryMB)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if opts.PoolIdle > 0 {
		s.bg.Add(1)
		go s.janitor()
	}
	return s, nil
}

func (s *Sandbox) Tier() isolation.Tier { return isolation.TierMicroVM }

func (s *Sandbox) Supports(req isolation.RuntimeRequirement) string {
	switch req {
	case isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary, isolation.RequireContainerImage:
		return ""
	}
	return "the microVM tier runs Python, Shell, Arbitrary and ContainerImage tools"
}

// Probe reports the first available driver, or why none is, and whether the guest image exists.
func (s *Sandbox) Probe(ctx context.Context) isolation.Availability {
	_, _, a := s.backend(ctx)
	if a.Available {
		if why := s.netUnavailable(ctx); why != "" {
			a.Network = "unavailable: " + why
		} else {
			a.Network = "a NIC per VM, in a per-call network namespace whose only way out is the egress gate"
		}
	}
	return a
}

func (s *Sandbox) backend(ctx context.Context) (Driver, vmimage.Image, isolation.Availability) {
	s.mu.Lock()
	if s.driver != nil {
		d, img := s.driver, s.img
		s.mu.Unlock()
		return d, img, isolation.Availability{Available: true, Backend: d.Name()}
	}
	s.mu.Unlock()
	var reasons []string
	var fix string
	var chosen Driver
	var a isolation.Availability
	for _, d := range s.opts.Drivers {
		a = d.Probe(ctx)
		if a.Available {
			chosen = d
			break
		}
		reasons = append(reasons, fmt.Sprintf("%s: %s", d.Name(), a.Reason))
		if fix == "" {
			fix = a.Fix
		}
	}
	if chosen == nil {
		if len(reasons) == 0 {
			reasons = append(reasons, "no VMM driver configured")
		}
		return nil, vmimage.Image{}, isolation.Availability{Reason: strings.Join(reasons, "; "), Fix: fix}
	}
	img, err := vmimage.Load(s.opts.DataDir)
	if err != nil {
		return nil, vmimage.Image{}, isolation.Availability{Backend: chosen.Name(), Reason: err.Error(), Fix: "run `axoiso vm prepare`"}
	}
	s.mu.Lock()
	s.driver, s.img = chosen, img
	s.mu.Unlock()
	return chosen, img, isolation.Availability{Available: true, Backend: chosen.Name()}
}

// vm is one booted machine whose agent said READY.
type vm struct {
	m      Machine
	dir    string
	conn   io.ReadWriteCloser
	fr     *guest.Reader
	kind   string // "cold", "restored"
	driver Driver
	ns     *callnet.NS // the NIC's namespace (nil: no NIC)
}

// DefaultMemoryMB is the guest RAM of calls that set none (sandbox.MemoryDefaulter).
func (s *Sandbox) DefaultMemoryMB() int { return DefaultMemoryMB }

func (s *Sandbox) shapeOf(l sandbox.Limits) shape {
	// Bounded whatever a library caller passes (the executor caps it far lower): the VMM gets
	// the size as a flag and the guest kernel sizes its tables by it.
	mem := sandbox.ClampMemoryMB(l.MemoryMB)
	if mem <= 0 {
		mem = DefaultMemoryMB
	}
	min := MinMemoryMB
	if _, img, a := s.backend(context.Background()); a.Available && s.driveRoot(img) {
		min = MinMemoryMBDriveRoot
	}
	if mem < min {
		mem = min
	}
	return shape{vcpus: s.opts.VCPUs, memMB: mem, net: !l.Egress.IsZero()}
}

func (s *Sandbox) spec(sh shape, img vmimage.Image, d Driver) (BootSpec, error) {
	id := fmt.Sprintf("axo-%d", s.seq.Add(1))
	dir := filepath.Join(s.runDir, id)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return BootSpec{}, err
	}
	cmd := BaseCmdline + " " + CmdlineChannel + "=" + d.GuestChannel()
	if s.opts.ExtraCmdline != "" {
		cmd += " " + s.opts.ExtraCmdline
	}
	initrd, root := img.Initrd, ""
	// need says which of the image's modules the agent loads (in the image's order).
	need := map[string]bool{}
	if s.driveRoot(img) {
		initrd, root = img.BootInitrd, img.Ext4
		cmd += " " + CmdlineRoot + "=vda"
		need["virtio_ring"], need["virtio"], need["virtio_mmio"], need["virtio_blk"] = true, true, true, true
	}
	image := ""
	if sh.drive != "" {
		c, err := s.drives()
		if err != nil {
			os.Remove(dir)
			return BootSpec{}, err
		}
		image = c.Path(sh.drive)
		cmd += " " + guest.CmdlineImage + "=1"
		need["virtio_ring"], need["virtio"], need["virtio_mmio"], need["virtio_blk"] = true, true, true, true
	}
	if sh.net {
		need["virtio_ring"], need["virtio"], need["virtio_mmio"] = true, true, true
		for _, m := range vmimage.NICModules {
			need[m] = true
		}
	}
	switch ch := d.GuestChannel(); {
	case strings.HasPrefix(ch, "vsock:"):
		for _, m := range img.Modules {
			need[m] = true
		}
	case strings.HasPrefix(ch, "vport"):
		need["virtio_ring"], need["virtio"], need["virtio_mmio"], need["virtio_console"] = true, true, true, true
	}
	var mods []string
	for _, m := range img.Modules {
		if need[m] {
			mods = append(mods, m)
		}
	}
	if len(mods) > 0 {
		cmd += " " + CmdlineModules + "=" + strings.Join(mods, ",")
	}
	return BootSpec{ID: id, RunDir: dir, Kernel: img.Kernel, Initrd: initrd, RootDrive: root, ImageDrive: image, Cmdline: cmd,
		VCPUs: sh.vcpus, MemoryMB: sh.memMB, Stderr: s.opts.Debug}, nil
}

// driveRoot says whether VMs boot the small initramfs and mount the root from the ext4 drive.
func (s *Sandbox) driveRoot(img vmimage.Image) bool {
	return !s.opts.rootInInitramfs && img.BootInitrd != "" && img.Ext4 != ""
}

// start boots (or restores) a VM of shape sh and waits for its READY.
func (s *Sandbox) start(ctx context.Context, sh shape, allowSnap bool) (*vm, error) {
	d, img, a := s.backend(ctx)
	if !a.Available {
		return nil, isolation.Errorf(isolation.ErrTierUnavailable, "%s (%s)", a.Reason, a.Fix)
	}
	var snap *Snapshot
	if sn, ok := d.(Snapshotter); ok && allowSnap && s.opts.Snapshots {
		if got, err := s.snapshot(ctx, sh, d, sn, img); err == nil {
			snap = &got
		} else {
			s.log.Warn("snapshot unavailable, booting cold", "err", err)
		}
	}
	spec, err := s.spec(sh, img, d)
	if err != nil {
		return nil, err
	}
	if sh.net {
		if spec.Net, err = s.takeNetns(ctx); err != nil {
			os.RemoveAll(spec.RunDir)
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	var m Machine
	kind := "cold"
	t0 := time.Now()
	if snap != nil {
		kind = "restored"
		m, err = d.(Snapshotter).Restore(ctx, *snap, spec)
	} else {
		m, err = d.Boot(ctx, spec)
	}
	if err != nil {
		os.RemoveAll(spec.RunDir)
		s.returnNetns(spec.Net) // the driver left no VMM, so no tap
		return nil, fmt.Errorf("%s: start VM: %w", d.Name(), err)
	}
	launched := time.Since(t0)
	v := &vm{m: m, dir: spec.RunDir, kind: kind, driver: d, ns: spec.Net}
	r, err := s.waitReady(ctx, v, snap != nil)
	if err != nil {
		s.destroy(v)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: VM not ready: %w", d.Name(), ctx.Err())
		}
		return nil, fmt.Errorf("%s: VM not ready: %w", d.Name(), err)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		attrs := []any{"vm", kind, "id", spec.ID, "launch_us", launched.Microseconds(), "ready_us", time.Since(t0).Microseconds()}
		if b := r.Boot; b != nil {
			// Guest clock: the kernel's boot, then the agent's steps.
			attrs = append(attrs, "guest_agent_us", b.AgentUS, "guest_modules_us", b.ModulesUS,
				"guest_root_us", b.RootUS, "guest_channel_us", b.ChannelUS)
		}
		s.log.Debug("VM ready", attrs...)
	}
	return v, nil
}

// waitReady reads the agent's READY; after a restore it first sends Hello with a fresh nonce.
func (s *Sandbox) waitReady(ctx context.Context, v *vm, restored bool) (guest.Ready, error) {
	stop := context.AfterFunc(ctx, func() { v.m.Kill() })
	defer stop()
	var r guest.Ready
	conn, err := v.m.Channel(ctx)
	if err != nil {
		return r, err
	}
	v.conn = conn
	v.fr = guest.NewReader(conn)
	nonce := ""
	if restored {
		nonce = randHex(16)
		if err := guest.WriteFrame(conn, guest.TypeHello, guest.Hello{Nonce: nonce}); err != nil {
			return r, err
		}
	}
	err = v.fr.Expect(guest.TypeReady, nonce, &r)
	return r, err
}

// snapshot returns the READY snapshot of shape sh, taking it on first use.
func (s *Sandbox) snapshot(ctx context.Context, sh shape, d Driver, sn Snapshotter, img vmimage.Image) (Snapshot, error) {
	s.mu.Lock()
	e := s.snaps[sh]
	if e == nil {
		e = &snapEntry{}
		s.snaps[sh] = e
	}
	s.mu.Unlock()
	e.once.Do(func() {
		defer e.done.Store(true)
		v, err := s.start(ctx, sh, false)
		if err != nil {
			e.err = err
			return
		}
		defer s.destroy(v)
		if s.driveRoot(img) {
			// Read from the drive once what a call needs (the agent's path, sh, Python and its
			// json imports), so that every clone finds it in its page cache instead of reading
			// it through virtio-blk. Costs ~1 s once and makes the snapshot somewhat larger.
			if err := s.warm(ctx, v, sh.drive == "", false, nil); err != nil {
				e.err = err
				return
			}
		}
		// A fresh name: a dropped snapshot of this shape may still be being removed.
		dir := filepath.Join(s.runDir, fmt.Sprintf("snap-%s-%d", sh.String(), s.seq.Add(1)))
		if err := os.Mkdir(dir, 0o700); err != nil {
			e.err = err
			return
		}
		e.snap, e.err = sn.Snapshot(ctx, v.m, dir)
		if e.err != nil {
			os.RemoveAll(dir)
		}
	})
	if e.err != nil {
		// Let a later call try again.
		s.mu.Lock()
		if s.snaps[sh] == e {
			delete(s.snaps, sh)
		}
		s.mu.Unlock()
	}
	return e.snap, e.err
}

// destroy kills the VM, removes its run dir and returns its namespace (its tap went with the
// VMM, which Kill waited for).
func (s *Sandbox) destroy(v *vm) {
	v.m.Kill()
	if err := os.RemoveAll(v.dir); err != nil {
		s.log.Warn("remove VM run dir", "dir", v.dir, "err", err)
	}
	s.returnNetns(v.ns)
	v.ns = nil
}

// destroyAsync destroys v off the call path; Close waits for it.
func (s *Sandbox) destroyAsync(v *vm) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.destroy(v)
	}()
}

// Run runs one call in a fresh VM (from the pool when one is ready).
func (s *Sandbox) Run(ctx context.Context, call sandbox.Call) (sandbox.Outcome, error) {
	t0 := time.Now()
	defer func() { s.runUS.Add(time.Since(t0).Microseconds()) }()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return sandbox.Outcome{}, errors.New("microvm: sandbox closed")
	}
	s.calls.Add(1)
	s.mu.Unlock()
	defer s.calls.Done()
	if ctx.Err() != nil {
		return sandbox.Outcome{}, fmt.Errorf("microvm: %s: %w", "before the VM started", sandbox.ContextError(ctx))
	}
	if why := s.Supports(call.Runtime); why != "" {
		return sandbox.Outcome{}, isolation.Errorf(isolation.ErrTierUnavailable, "%s", why)
	}
	call.Limits = call.Limits.WithDefaults()
	req, rootfs, err := buildRequest(call)
	if err != nil {
		return sandbox.Outcome{}, err
	}
	sh := s.shapeOf(call.Limits)
	if sh.net {
		// Never run a tool with a policy as if it had none.
		if _, err := s.network(ctx); err != nil {
			return sandbox.Outcome{}, err
		}
	}
	if rootfs != "" {
		d, err := s.openDrive(ctx, call.Tool, rootfs)
		if err != nil {
			return sandbox.Outcome{}, err
		}
		// Held until the VM is up (the shape holds it from touch on).
		defer d.Close()
		sh.drive = d.Digest
		s.touchDrive(sh, d)
	} else {
		s.touch(sh)
	}
	if v := s.takePooled(sh); v != nil {
		s.pooled.Add(1)
		s.refill(sh)
		sent := time.Now()
		o, err := s.exchange(ctx, v, call, req)
		s.destroyAsync(v)
		if !vmmDied(v, err) || ctx.Err() != nil || time.Since(sent) > pooledRetryWindow || sh.net {
			return o, err
		}
		// The pooled VMM died right as we took it (killed while idle, a moment before the
		// liveness check could see it). Nothing of the call can have left the VM, which had no
		// NIC (a VM with one is never retried: its tool may have reached the network) and is
		// gone: run it once more in a fresh VM. Only then: a VMM that dies later, with the tool
		// under way, fails the call rather than run the tool twice.
		s.deadPooled.Add(1)
		s.log.Warn("pooled VM died under the call; retrying in a fresh VM", "call", call.ID, "err", err)
	}
	v, err := s.start(ctx, sh, true)
	if err != nil {
		if ctx.Err() != nil {
			return sandbox.Outcome{}, fmt.Errorf("microvm: %s: %w", "while the VM started", sandbox.ContextError(ctx))
		}
		return sandbox.Outcome{}, sandboxFailed(err, "VM start")
	}
	if v.kind == "restored" {
		s.restored.Add(1)
	} else {
		s.cold.Add(1)
	}
	s.refill(sh)
	defer s.destroyAsync(v)
	return s.exchange(ctx, v, call, req)
}

// sandboxFailed types err as the tier's own failure (isolation.ErrSandboxFailed), unless it
// already is an *isolation.Error of some class.
func sandboxFailed(err error, what string) error {
	var ie *isolation.Error
	if errors.As(err, &ie) {
		return err
	}
	return &isolation.Error{Kind: isolation.ErrSandboxFailed, Tier: isolation.TierMicroVM, HasTier: true,
		Message: what, Err: err}
}

// vmmDied says whether err is v's VMM having exited under the call (as opposed to the tool
// failing, a timeout or a cancellation).
func vmmDied(v *vm, err error) bool {
	if !errors.Is(err, isolation.ErrSandboxFailed) {
		return false
	}
	select {
	case <-v.m.Done():
		return true
	default:
		return false
	}
}

// lostVM is the error of a call whose channel to the guest failed: ErrSandboxFailed, saying
// whether the VMM process is gone (killed, crashed) or only the channel broke.
func lostVM(v *vm, what string, err error) error {
	// The channel can break a moment before the VMM's exit is reaped.
	select {
	case <-v.m.Done():
	case <-time.After(100 * time.Millisecond):
	}
	select {
	case <-v.m.Done():
		what += ": the VMM exited"
	default:
	}
	return &isolation.Error{Kind: isolation.ErrSandboxFailed, Tier: isolation.TierMicroVM, HasTier: true,
		Message: fmt.Sprintf("%s (%s)", what, v.driver.Name()), Err: err}
}

func (s *Sandbox) exchange(ctx context.Context, v *vm, call sandbox.Call, req guest.Request) (sandbox.Outcome, error) {
	backend := v.driver.Name()
	hard, cancel := context.WithTimeout(ctx, call.Limits.Timeout+responseGrace)
	defer cancel()
	stop := context.AfterFunc(hard, func() { v.m.Kill() })
	defer stop()
	var release func()
	req.Net, release = s.bindNet(v, call)
	defer release()
	t0 := time.Now()
	if err := guest.WriteFrame(v.conn, guest.TypeRequest, req); err != nil {
		if ctx.Err() != nil {
			return sandbox.Outcome{}, fmt.Errorf("microvm: %s: %w", "VM killed", sandbox.ContextError(ctx))
		}
		if hard.Err() != nil {
			return sandbox.Outcome{}, isolation.Errorf(isolation.ErrTimeout, "VM killed at the deadline")
		}
		return sandbox.Outcome{}, lostVM(v, "send request", err)
	}
	v.fr.Max = int(call.Limits.MaxOutputBytes)*4/3 + call.Limits.MaxStderrBytes*6 + 64<<10
	var resp guest.Response
	if err := v.fr.Expect(guest.TypeResponse, "", &resp); err != nil {
		if errors.Is(ctx.Err(), context.Canceled) {
			return sandbox.Outcome{}, fmt.Errorf("microvm: %s: %w", "VM killed", sandbox.ContextError(ctx))
		}
		if hard.Err() != nil {
			return sandbox.Outcome{}, isolation.Errorf(isolation.ErrTimeout, "tool did not finish within %s; VM killed", call.Limits.Timeout)
		}
		return sandbox.Outcome{}, lostVM(v, "read response", err)
	}
	// The guest answers once the tool exited and its output was read: what follows (the policy
	// unbound, the VM destroyed) is teardown.
	sandbox.ToolExited(ctx)
	exch := time.Since(t0)
	out := sandbox.Outcome{ExitCode: resp.ExitCode, Stderr: resp.Stderr, Stdout: resp.Stdout, Backend: backend}
	s.toolMS.Add(resp.RunMS)
	s.exchangeUS.Add(exch.Microseconds())
	if sp := resp.Spans; sp != nil {
		g := sp.RecvUS + sp.DecodeUS + sp.PrepUS + sp.RunUS + sp.CollectUS
		s.guestUS.Add(g)
		s.recvUS.Add(sp.RecvUS)
		s.log.Debug("call spans", "vm", v.kind, "exchange_us", exch.Microseconds(), "guest_us", g,
			"recv_us", sp.RecvUS, "decode_us", sp.DecodeUS, "prep_us", sp.PrepUS, "run_us", sp.RunUS, "collect_us", sp.CollectUS)
	}
	switch {
	case resp.Error != "":
		return out, &isolation.Error{Kind: isolation.ErrSandboxFailed, Tier: isolation.TierMicroVM, HasTier: true,
			Message: fmt.Sprintf("%s: guest agent: %s", backend, resp.Error), Stderr: resp.Stderr}
	case resp.TimedOut:
		return out, &isolation.Error{Kind: isolation.ErrTimeout, Message: fmt.Sprintf("tool did not finish within %s", call.Limits.Timeout), Stderr: resp.Stderr, ExitCode: resp.ExitCode}
	case resp.OOMKilled && resp.ExitCode != 0:
		return out, &isolation.Error{Kind: isolation.ErrMemoryLimit, Message: fmt.Sprintf("the guest ran out of its %d MB", s.shapeOf(call.Limits).memMB), Stderr: resp.Stderr, ExitCode: resp.ExitCode}
	case resp.OutputTooLarge:
		return out, isolation.Errorf(isolation.ErrOutputTooLarge, "%s is over the limit of %d bytes", sandbox.OutputFile, call.Limits.MaxOutputBytes)
	case resp.OutputInvalid != "":
		return out, isolation.Errorf(isolation.ErrOutputInvalid, "%s", resp.OutputInvalid)
	}
	if resp.HasOutput {
		out.Output = resp.Output
		if out.Output == nil {
			out.Output = []byte{}
		}
	}
	return out, nil
}

// buildRequest reads the tool folder (see readToolFolder) into a request. For a call on an
// image (a ContainerImage bundle, a script tool's base) it also returns the image's rootfs.
func buildRequest(call sandbox.Call) (guest.Request, string, error) {
	if err := callio.CheckCallPaths(call); err != nil {
		return guest.Request{}, "", err
	}
	entropy := make([]byte, 64)
	_, _ = rand.Read(entropy)
	req := guest.Request{
		ID: call.ID, Input: call.Input, Env: call.Env, Entropy: entropy, TimeoutMS: call.Limits.Timeout.Milliseconds(),
		MaxOutputBytes: call.Limits.MaxOutputBytes, MaxStderrBytes: call.Limits.MaxStderrBytes,
	}
	rootfs, proc, err := imageRoot(call)
	if err != nil {
		return guest.Request{}, "", err
	}
	if call.Runtime == isolation.RequireContainerImage {
		req.Runtime = guest.RuntimeImage
		req.Image, err = imageProcess(call, proc, "")
		return req, rootfs, err
	}
	rel, err := filepath.Rel(call.Dir, call.Entrypoint)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") || filepath.IsAbs(rel) {
		return guest.Request{}, "", fmt.Errorf("entrypoint %q is not inside the tool folder %q", call.Entrypoint, call.Dir)
	}
	switch call.Runtime {
	case isolation.RequirePython:
		req.Runtime = guest.RuntimePython
	case isolation.RequireShell:
		req.Runtime = guest.RuntimeShell
	case isolation.RequireArbitrary:
		req.Runtime = guest.RuntimeArbitrary
	}
	req.Entrypoint = filepath.ToSlash(rel)
	if req.Files, err = readToolFolder(call.Dir); err != nil {
		return guest.Request{}, "", err
	}
	if rootfs != "" {
		if req.Image, err = imageProcess(call, proc, rel); err != nil {
			return guest.Request{}, "", err
		}
	}
	return req, rootfs, nil
}

// Stats says how many VMs were started cold, restored and taken from the pool.
func (s *Sandbox) Stats() Stats {
	return Stats{Cold: s.cold.Load(), Restored: s.restored.Load(), Pooled: s.pooled.Load(), DeadPooled: s.deadPooled.Load(), ToolMS: s.toolMS.Load(),
		RunUS: s.runUS.Load(), ExchangeUS: s.exchangeUS.Load(), GuestUS: s.guestUS.Load(), RecvUS: s.recvUS.Load()}
}

// RunDir is this sandbox's private run directory (removed by Close).
func (s *Sandbox) RunDir() string { return s.runDir }

// Close stops the pools, kills every VM, removes the snapshots and the run directory. Idempotent.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	pools := s.pools
	s.pools = map[shape]*pool{}
	s.mu.Unlock()
	s.calls.Wait()
	s.cancel()
	for _, p := range pools {
		p.close(s)
	}
	s.bg.Wait()
	// Drain VMs a refill finished after its pool closed.
	for _, p := range pools {
		p.close(s)
	}
	s.closeNet()
	s.mu.Lock()
	for digest, d := range s.held {
		d.Close()
		delete(s.held, digest)
	}
	s.mu.Unlock()
	err := os.RemoveAll(s.runDir)
	if kerr := s.keep.Stop(keeperStop); kerr != nil {
		s.log.Warn("microVM keeper", "err", kerr)
	}
	if s.runLock != nil {
		s.runLock.Close()
	}
	return err
}

// keeperStop bounds how long Close waits for the keeper to see its pipe closed and exit.
const keeperStop = 10 * time.Second

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
