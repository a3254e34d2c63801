package callnet

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// blockLockFile holds one lock byte per /31 block (at the block's IPv4 address / 2): a block is
// used by the process holding its byte, whichever pool or range it came from.
const blockLockFile = "/run/axocoatl/callnet-blocks.lock"

// Available reports why per-call networks cannot be made on this host ("" when they can).
func Available() string {
	if os.Geteuid() != 0 {
		return "per-call networks need root: a veth pair per call and nftables rules in the host's network namespace (rootless, tools with a network policy are refused)"
	}
	if _, err := listTables(TablePrefix); err != nil {
		return fmt.Sprintf("nftables is not usable here: %v", err)
	}
	return ""
}

// Pool keeps network namespaces ready for calls. Safe for concurrent use.
type Pool struct {
	cfg      Config
	log      *slog.Logger
	ifPrefix string // every host-side link of this pool starts with it
	ports    ports
	lock     *os.File // blockLockFile
	base     uint32   // Prefix's first address
	blocks   int      // /31 blocks in Prefix
	cancel   context.CancelFunc
	serving  sync.WaitGroup
	lns      []interface{ Close() error }

	mu      sync.Mutex
	ready   []*NS  // guarded by mu
	back    []*NS  // guarded by mu: returned after a call, for the filler to check
	used    []bool // guarded by mu: block i is held by a namespace of this pool
	total   int    // guarded by mu: namespaces that exist (ready, in use, being checked)
	seq     uint64 // guarded by mu: link name counter
	stats   Stats  // guarded by mu
	closed  bool   // guarded by mu
	changed chan struct{}

	wake chan struct{}
	done chan struct{}
	fill sync.WaitGroup
}

// NS is one prepared namespace. Its fields are fixed for its life.
type NS struct {
	p    *Pool
	f    *os.File // the namespace
	blk  int
	Addr netip.Addr // the container side (eth0)
	Peer netip.Addr // the host side: gateway and DNS server
	Link string     // the host side's name
	// ResolvConf is a file naming Peer as the only nameserver, to mount at /etc/resolv.conf
	// ("" in a namespace for VMs).
	ResolvConf string
}

// Path names the namespace for a runtime to join (a path under /proc of this process).
func (n *NS) Path() string { return nsPath(n.f) }

// Fd is the namespace's descriptor (valid until the namespace is returned).
func (n *NS) Fd() int { return int(n.f.Fd()) }

// New sets up the pool's table and the gate's listeners and starts preparing namespaces.
func New(cfg Config, log *slog.Logger) (*Pool, error) {
	if why := Available(); why != "" {
		return nil, fmt.Errorf("%w: %s", ErrUnavailable, why)
	}
	if !strings.HasPrefix(cfg.Table, TablePrefix) || len(cfg.Table) > 200 {
		return nil, fmt.Errorf("callnet: table name %q must start with %q", cfg.Table, TablePrefix)
	}
	if cfg.Gate == nil {
		return nil, errors.New("callnet: no gate")
	}
	if !cfg.Prefix.IsValid() {
		cfg.Prefix = netip.MustParsePrefix(DefaultPrefix)
	}
	cfg.Prefix = cfg.Prefix.Masked()
	if !cfg.Prefix.Addr().Is4() || cfg.Prefix.Bits() > 31 {
		return nil, fmt.Errorf("callnet: prefix %s must be IPv4 and hold at least one /31", cfg.Prefix)
	}
	if cfg.Ready <= 0 {
		cfg.Ready = DefaultReady
	}
	if cfg.Max <= 0 {
		cfg.Max = DefaultMax
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.RunDir, 0o711); err != nil {
		return nil, fmt.Errorf("callnet: run dir: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(blockLockFile), 0o711); err != nil {
		return nil, err
	}
	lf, err := os.OpenFile(blockLockFile, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("callnet: %w", err)
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	a4 := cfg.Prefix.Addr().As4()
	p := &Pool{cfg: cfg, log: log.With("table", cfg.Table), ifPrefix: "ax" + hex.EncodeToString(b), lock: lf,
		base: binary.BigEndian.Uint32(a4[:]), blocks: 1 << (31 - cfg.Prefix.Bits()),
		changed: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
	p.used = make([]bool, min(p.blocks, 1<<16))
	if err := p.listen(); err != nil {
		p.stopServing()
		lf.Close()
		return nil, err
	}
	if err := installTable(cfg.Table, p.ifPrefix, p.ports); err != nil {
		p.stopServing()
		lf.Close()
		_ = deleteTable(cfg.Table)
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	p.fill.Add(1)
	go p.filler()
	return p, nil
}

// listen opens the gate's listeners on every host address (the redirect rewrites the destination
// to the host side of the pair the connection came in on) and serves them until Close.
func (p *Pool) listen() error {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	tcp, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		return err
	}
	p.lns = append(p.lns, tcp)
	udp, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		return err
	}
	p.lns = append(p.lns, udp)
	dnsTCP, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		return err
	}
	p.lns = append(p.lns, dnsTCP)
	relay, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		return err
	}
	p.lns = append(p.lns, relay)
	p.ports = ports{proxy: port(tcp.Addr()), dnsUDP: port(udp.LocalAddr()), dnsTCP: port(dnsTCP.Addr()), udpRelay: port(relay.LocalAddr())}
	p.serving.Add(3)
	go func() {
		defer p.serving.Done()
		relayPort := p.ports.udpRelay
		if err := p.cfg.Gate.ServeUDP(ctx, relay, func(src netip.AddrPort) (netip.AddrPort, error) { return udpOrigDst(src, relayPort) }); err != nil && ctx.Err() == nil {
			p.log.Error("egress UDP relay stopped", "error", err)
		}
	}()
	go func() {
		defer p.serving.Done()
		if err := p.cfg.Gate.ServeTCP(ctx, tcp); err != nil && ctx.Err() == nil {
			p.log.Error("egress proxy stopped", "error", err)
		}
	}()
	go func() {
		defer p.serving.Done()
		if err := p.cfg.Gate.ServeDNS(ctx, udp, dnsTCP); err != nil && ctx.Err() == nil {
			p.log.Error("egress DNS stopped", "error", err)
		}
	}()
	return nil
}

func port(a net.Addr) uint16 {
	switch a := a.(type) {
	case *net.TCPAddr:
		return uint16(a.Port)
	case *net.UDPAddr:
		return uint16(a.Port)
	}
	return 0
}

func (p *Pool) stopServing() {
	if p.cancel != nil {
		p.cancel()
	}
	for _, l := range p.lns {
		_ = l.Close()
	}
	p.serving.Wait()
}

// LinkPrefix is what every host-side link of this pool is named with.
func (p *Pool) LinkPrefix() string { return p.ifPrefix }

// Table is the pool's nftables table (family inet).
func (p *Pool) Table() string { return p.cfg.Table }

// Get returns a prepared namespace: a ready one, else one made now (when the pool has fewer than
// Max), else it waits for one until ctx ends. Return it with Put.
func (p *Pool) Get(ctx context.Context) (*NS, error) {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, errors.New("callnet: pool is closed")
		}
		if n := len(p.ready); n > 0 {
			ns := p.ready[n-1]
			p.ready = p.ready[:n-1]
			p.stats.InUse++
			p.mu.Unlock()
			p.kick()
			return ns, nil
		}
		if p.total < p.cfg.Max {
			p.total++
			p.stats.InUse++
			p.mu.Unlock()
			p.kick()
			ns, err := p.create()
			if err != nil {
				p.mu.Lock()
				p.total--
				p.stats.InUse--
				p.mu.Unlock()
				return nil, err
			}
			return ns, nil
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("callnet: all %d namespaces are in use: %w", p.cfg.Max, ctx.Err())
		}
	}
}

// Put returns a namespace after its call: nothing of the call may be left inside (its processes
// are gone). The filler checks it and keeps it for another call or destroys it.
func (p *Pool) Put(ns *NS) {
	if ns == nil {
		return
	}
	p.mu.Lock()
	p.stats.InUse--
	if p.closed {
		p.mu.Unlock()
		p.destroy(ns)
		return
	}
	p.back = append(p.back, ns)
	p.mu.Unlock()
	p.kick()
}

func (p *Pool) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// notify must be called with mu held.
func (p *Pool) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// filler recycles returned namespaces and keeps Ready of them prepared.
func (p *Pool) filler() {
	defer p.fill.Done()
	backoff := 100 * time.Millisecond
	for {
		p.mu.Lock()
		back := p.back
		p.back = nil
		p.mu.Unlock()
		for _, ns := range back {
			keep := false
			if err := p.recycle(ns); err != nil {
				p.log.Info("network namespace not reused", "link", ns.Link, "reason", err)
			} else {
				p.mu.Lock()
				if !p.closed && len(p.ready) < p.cfg.Ready {
					p.ready = append(p.ready, ns)
					p.stats.Recycled++
					p.notify()
					keep = true
				}
				p.mu.Unlock()
			}
			if !keep {
				p.destroy(ns)
			}
		}
		p.mu.Lock()
		want := !p.closed && len(p.ready) < p.cfg.Ready && p.total < p.cfg.Max
		if want {
			p.total++
		}
		p.mu.Unlock()
		wait := time.Duration(0)
		if want {
			ns, err := p.create()
			p.mu.Lock()
			if err != nil {
				p.total--
			} else if p.closed {
				p.total--
			} else {
				p.ready = append(p.ready, ns)
				p.notify()
				ns = nil
			}
			p.mu.Unlock()
			if ns != nil && err == nil {
				p.destroyCreated(ns)
			}
			if err != nil {
				p.log.Warn("prepare network namespace", "error", err)
				wait = backoff
				backoff = min(2*backoff, 30*time.Second)
			} else {
				backoff = 100 * time.Millisecond
				continue
			}
		} else {
			wait = time.Hour
		}
		t := time.NewTimer(wait)
		select {
		case <-p.done:
			t.Stop()
			return
		case <-p.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// create makes one namespace with its pair, addresses, routes and resolv.conf. The caller
// counted it in total.
func (p *Pool) create() (ns *NS, err error) {
	blk, err := p.takeBlock()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			p.giveBlock(blk)
		}
	}()
	host, ctr := p.addrs(blk)
	f, err := newNetns()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	p.mu.Lock()
	p.seq++
	link := p.ifPrefix + strconv.FormatUint(p.seq, 36)
	p.mu.Unlock()
	if len(link) > 15 {
		return nil, fmt.Errorf("callnet: link name %s too long", link)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: link}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(f.Fd()))}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("callnet: veth %s: %w", link, err)
	}
	defer func() {
		if err != nil {
			_ = netlink.LinkDel(veth)
		}
	}()
	if err := setHostSysctls(link); err != nil {
		return nil, err
	}
	hl, err := netlink.LinkByName(link)
	if err != nil {
		return nil, err
	}
	if err := netlink.AddrAdd(hl, &netlink.Addr{IPNet: ipnet(host, 31)}); err != nil {
		return nil, fmt.Errorf("callnet: address %s on %s: %w", host, link, err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return nil, err
	}
	rc := ""
	if p.cfg.ForVMs {
		if err := configureForVM(int(f.Fd())); err != nil {
			return nil, fmt.Errorf("callnet: inside %s: %w", link, err)
		}
	} else {
		if err := configureInside(int(f.Fd()), ctr, host); err != nil {
			return nil, fmt.Errorf("callnet: inside %s: %w", link, err)
		}
		rc = filepath.Join(p.cfg.RunDir, link+".resolv.conf")
		if err := os.WriteFile(rc, []byte("nameserver "+host.String()+"\noptions timeout:2 attempts:2\n"), 0o644); err != nil {
			return nil, fmt.Errorf("callnet: %w", err)
		}
	}
	p.mu.Lock()
	p.stats.Created++
	p.mu.Unlock()
	return &NS{p: p, f: f, blk: blk, Addr: ctr, Peer: host, Link: link, ResolvConf: rc}, nil
}

// configureInside brings up lo and eth0 with its address and the default route via the host.
func configureInside(fd int, ctr, host netip.Addr) error {
	h, err := netlink.NewHandleAt(nsHandle(fd))
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(lo); err != nil {
		return err
	}
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(ctr, 31)}); err != nil {
		return err
	}
	if err := h.LinkSetUp(eth); err != nil {
		return err
	}
	return h.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: host.AsSlice(), Dst: nil})
}

// recycle checks that a returned namespace is as it was made and holds nothing of its last call,
// and forgets the host's connection tracking of its address (a new call must not ride an old
// call's redirected connections).
func (p *Pool) recycle(ns *NS) error {
	hl, err := netlink.LinkByName(ns.Link)
	if err != nil {
		return fmt.Errorf("host link: %w", err)
	}
	if hl.Attrs().Flags&net.FlagUp == 0 {
		return errors.New("host link down")
	}
	if !hasAddr(netlink.AddrList(hl, netlink.FAMILY_V4))(ns.Peer) {
		return errors.New("host address changed")
	}
	if p.cfg.ForVMs {
		// A persistent tap (MakeTap) outlives its VMM; a VMM's own (OpenTap) is gone with it.
		ns.removeTap()
	}
	// UDP grants whose release did not run (it always should) are not the next call's.
	if err := deleteTagged(p.cfg.Table, ns.Link); err != nil {
		return fmt.Errorf("UDP grant rules: %w", err)
	}
	h, err := netlink.NewHandleAt(nsHandle(ns.Fd()))
	if err != nil {
		return err
	}
	eth, err := h.LinkByName("eth0")
	ok := err == nil && eth.Attrs().Flags&net.FlagUp != 0
	if ok {
		as, aerr := h.AddrList(eth, netlink.FAMILY_V4)
		if p.cfg.ForVMs {
			ok = aerr == nil && len(as) == 0
		} else {
			ok = hasAddr(as, aerr)(ns.Addr)
		}
	}
	if ok {
		links, lerr := h.LinkList()
		ok = lerr == nil && len(links) == 2 // lo and eth0
	}
	h.Close()
	if !ok {
		return errors.New("links inside changed")
	}
	n, err := socketsIn(ns.Fd())
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%d sockets left inside", n)
	}
	flushConntrack(ns.Addr)
	return nil
}

func flushConntrack(a netip.Addr) {
	f := &netlink.ConntrackFilter{}
	if err := f.AddIP(netlink.ConntrackOrigSrcIP, a.AsSlice()); err != nil {
		return
	}
	_, _ = netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
}

func hasAddr(as []netlink.Addr, err error) func(netip.Addr) bool {
	return func(a netip.Addr) bool {
		if err != nil {
			return false
		}
		for _, x := range as {
			if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == a {
				return true
			}
		}
		return false
	}
}

// destroy removes a namespace that was counted in total.
func (p *Pool) destroy(ns *NS) {
	p.destroyCreated(ns)
	p.mu.Lock()
	p.total--
	p.notify()
	p.mu.Unlock()
}

// destroyCreated removes the pair (and with it eth0), the namespace, its resolv.conf and its
// block, and forgets the conntrack entries of its address.
func (p *Pool) destroyCreated(ns *NS) {
	if l, err := netlink.LinkByName(ns.Link); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			p.log.Warn("delete veth", "link", ns.Link, "error", err)
		}
	}
	ns.f.Close()
	flushConntrack(ns.Addr)
	if ns.ResolvConf != "" {
		_ = os.Remove(ns.ResolvConf)
	}
	p.giveBlock(ns.blk)
	p.mu.Lock()
	p.stats.Destroyed++
	p.mu.Unlock()
}

// addrs are the host and container addresses of block i.
func (p *Pool) addrs(i int) (host, ctr netip.Addr) {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], p.base+uint32(2*i))
	host = netip.AddrFrom4(b)
	return host, host.Next()
}

// takeBlock finds a free /31: not held by this pool, its host-wide lock free, and neither
// address on any host link (a link of a dead owner may linger while the kernel removes its
// namespace).
func (p *Pool) takeBlock() (int, error) {
	local := localAddrs()
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.used {
		if p.used[i] {
			continue
		}
		host, ctr := p.addrs(i)
		if local[host] || local[ctr] {
			continue
		}
		a := host.As4()
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: int64(binary.BigEndian.Uint32(a[:]) >> 1), Len: 1}
		if unix.FcntlFlock(p.lock.Fd(), unix.F_OFD_SETLK, &lk) != nil {
			continue
		}
		p.used[i] = true
		return i, nil
	}
	return 0, fmt.Errorf("callnet: no free /31 in %s", p.cfg.Prefix)
}

func (p *Pool) giveBlock(i int) {
	host, _ := p.addrs(i)
	a := host.As4()
	lk := unix.Flock_t{Type: unix.F_UNLCK, Start: int64(binary.BigEndian.Uint32(a[:]) >> 1), Len: 1}
	_ = unix.FcntlFlock(p.lock.Fd(), unix.F_OFD_SETLK, &lk)
	p.mu.Lock()
	p.used[i] = false
	p.mu.Unlock()
}

func localAddrs() map[netip.Addr]bool {
	m := map[netip.Addr]bool{}
	as, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return m
	}
	for _, a := range as {
		if x, ok := netip.AddrFromSlice(a.IP); ok {
			m[x.Unmap()] = true
		}
	}
	return m
}

func ipnet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}
}

// Stats reports the pool's counts.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Ready = len(p.ready)
	return s
}

// WaitReady waits until the pool holds Ready namespaces or ctx ends.
func (p *Pool) WaitReady(ctx context.Context) error {
	for {
		p.mu.Lock()
		n, ch := len(p.ready), p.changed
		p.mu.Unlock()
		if n >= p.cfg.Ready {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close destroys the ready namespaces (those in use are destroyed when Put), stops the gate's
// listeners and deletes the table. The caller has ended every call first.
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.notify()
	p.mu.Unlock()
	close(p.done)
	p.fill.Wait()
	p.mu.Lock()
	left := append(p.ready, p.back...)
	p.ready, p.back = nil, nil
	p.mu.Unlock()
	for _, ns := range left {
		p.destroy(ns)
	}
	p.stopServing()
	err := deleteTable(p.cfg.Table)
	p.lock.Close()
	return err
}

// ReapTable deletes the table of an owner that is gone. Its namespaces and pairs went with its
// processes.
func ReapTable(name string) error {
	if !strings.HasPrefix(name, TablePrefix) || os.Geteuid() != 0 {
		return nil
	}
	return deleteTable(name)
}

func nsHandle(fd int) netns.NsHandle { return netns.NsHandle(fd) }

// Discard destroys a namespace without recycling it: its call's processes may still be inside
// (a container that could not be destroyed). Its pair goes at once, so nothing inside reaches
// anything any more; the namespace itself goes with its last process.
func (p *Pool) Discard(ns *NS) {
	if ns == nil {
		return
	}
	p.mu.Lock()
	p.stats.InUse--
	p.mu.Unlock()
	p.destroy(ns)
}
