package callnet

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/fakenet"
)

// standIn is a gate that records what the rules send it: for each TCP connection its source,
// original destination and first line; for each DNS packet its source.
type standIn struct {
	mu   sync.Mutex
	tcp  []arrival
	dns  []arrival
	udp  []arrival
	tcpN chan struct{}
}

type arrival struct {
	src, dst netip.AddrPort
	line     string
}

func newStandIn() *standIn { return &standIn{tcpN: make(chan struct{}, 100)} }

func (g *standIn) ServeTCP(ctx context.Context, ln net.Listener) error {
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			dst, _ := originalDst(c.(*net.TCPConn))
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			g.mu.Lock()
			g.tcp = append(g.tcp, arrival{src: c.RemoteAddr().(*net.TCPAddr).AddrPort(), dst: dst, line: strings.TrimSpace(line)})
			g.mu.Unlock()
			fmt.Fprintf(c, "seen %s\n", dst)
			g.tcpN <- struct{}{}
		}()
	}
}

func (g *standIn) ServeDNS(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	go func() { <-ctx.Done(); pc.Close(); ln.Close() }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.dns = append(g.dns, arrival{src: c.RemoteAddr().(*net.TCPAddr).AddrPort(), line: "tcp"})
			g.mu.Unlock()
			c.Close()
		}
	}()
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		g.mu.Lock()
		g.dns = append(g.dns, arrival{src: from.(*net.UDPAddr).AddrPort(), line: "udp"})
		g.mu.Unlock()
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// ServeUDP records each relayed datagram's source and original destination and answers it.
func (g *standIn) ServeUDP(ctx context.Context, pc net.PacketConn, origDst func(netip.AddrPort) (netip.AddrPort, error)) error {
	go func() { <-ctx.Done(); pc.Close() }()
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		src := from.(*net.UDPAddr).AddrPort()
		dst, _ := origDst(netip.AddrPortFrom(src.Addr().Unmap(), src.Port()))
		g.mu.Lock()
		g.udp = append(g.udp, arrival{src: src, dst: dst, line: string(buf[:n])})
		g.mu.Unlock()
		_, _ = pc.WriteTo([]byte("relayed "+dst.String()), from)
	}
}

func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var ap netip.AddrPort
	var serr error
	_ = raw.Control(func(fd uintptr) {
		var mr *unix.IPv6Mreq // SO_ORIGINAL_DST returns a sockaddr_in in 16 bytes
		mr, serr = unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, 80)
		if serr == nil {
			a := netip.AddrFrom4([4]byte(mr.Multiaddr[4:8]))
			ap = netip.AddrPortFrom(a, uint16(mr.Multiaddr[2])<<8|uint16(mr.Multiaddr[3]))
		}
	})
	return ap, serr
}

func needRoot(t testing.TB) {
	t.Helper()
	if why := Available(); why != "" {
		t.Skip(why)
	}
}

func testTable() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return TablePrefix + "test-" + hex.EncodeToString(b)
}

func newTestPool(t *testing.T, g Gate, ready, max int) *Pool {
	t.Helper()
	needRoot(t)
	p, err := New(Config{Table: testTable(), RunDir: t.TempDir(), Gate: g, Ready: ready, Max: max}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// inside runs f on a thread in ns: sockets f creates belong to ns.
func inside(t *testing.T, ns *NS, f func()) {
	t.Helper()
	if err := inNetns(ns.Fd(), func() error { f(); return nil }); err != nil {
		t.Fatal(err)
	}
}

func dialIn(t *testing.T, ns *NS, network, addr string) (c net.Conn, err error) {
	t.Helper()
	inside(t, ns, func() { c, err = net.DialTimeout(network, addr, 3*time.Second) })
	return c, err
}

func TestRulesSendTCPAndDNSToTheGateAndRejectTheRest(t *testing.T) {
	g := newStandIn()
	p := newTestPool(t, g, 1, 4)
	ctx := context.Background()
	ns, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Put(ns)

	t.Run("tcp to a public address reaches the proxy with its original destination", func(t *testing.T) {
		c, err := dialIn(t, ns, "tcp4", "203.0.113.7:443")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "hello\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		reply, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.Contains(reply, "203.0.113.7:443") {
			t.Fatalf("reply %q, %v", reply, err)
		}
		g.mu.Lock()
		last := g.tcp[len(g.tcp)-1]
		g.mu.Unlock()
		if last.src.Addr() != ns.Addr || last.dst != netip.MustParseAddrPort("203.0.113.7:443") || last.line != "hello" {
			t.Fatalf("the gate saw %+v; want from %s to 203.0.113.7:443", last, ns.Addr)
		}
	})
	t.Run("udp and tcp 53 anywhere reach the DNS server", func(t *testing.T) {
		c, err := dialIn(t, ns, "udp4", "198.51.100.53:53")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write([]byte("query"))
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 64)
		if n, err := c.Read(buf); err != nil || string(buf[:n]) != "query" {
			t.Fatalf("udp 53: %q %v", buf[:n], err)
		}
		tc, err := dialIn(t, ns, "tcp4", "198.51.100.53:53")
		if err != nil {
			t.Fatalf("tcp 53: %v", err)
		}
		tc.Close()
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			g.mu.Lock()
			n := len(g.dns)
			g.mu.Unlock()
			if n >= 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the DNS server saw %d queries, want 2", n)
			}
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, a := range g.dns {
			if a.src.Addr() != ns.Addr {
				t.Fatalf("DNS from %s, want %s", a.src, ns.Addr)
			}
		}
	})
	g.mu.Lock()
	before := len(g.tcp) + len(g.dns)
	g.mu.Unlock()
	t.Run("DNS over TLS is reset at once", func(t *testing.T) {
		start := time.Now()
		_, err := dialIn(t, ns, "tcp4", "198.51.100.53:853")
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial 853: %v, want connection refused", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("refused after %v", d)
		}
	})
	for _, dst := range []string{"198.51.100.9:443", "203.0.113.7:53000", "169.254.169.254:123", "127.0.0.2:9", "255.255.255.255:67"} {
		t.Run("udp "+dst+" is rejected at once", func(t *testing.T) {
			var c net.Conn
			var err error
			inside(t, ns, func() {
				var la *net.UDPAddr
				c, err = net.DialUDP("udp4", la, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
				if err == nil && strings.HasPrefix(dst, "255.") {
					err = setBroadcast(c)
				}
			})
			if err != nil {
				if strings.HasPrefix(dst, "127.") {
					return // loopback stays inside the namespace: nothing listens
				}
				t.Fatal(err)
			}
			defer c.Close()
			_, _ = c.Write([]byte("x"))
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, err = c.Read(make([]byte, 8))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !strings.HasPrefix(dst, "255.") {
				t.Fatalf("no rejection within 2 s: %v", err)
			}
			if err == nil {
				t.Fatal("got an answer")
			}
		})
	}
	t.Run("ipv6 has no route", func(t *testing.T) {
		_, err := dialIn(t, ns, "tcp6", "[2001:db8::1]:443")
		if err == nil {
			t.Fatal("reached an IPv6 address")
		}
	})
	g.mu.Lock()
	after := len(g.tcp) + len(g.dns)
	g.mu.Unlock()
	if after != before {
		t.Fatalf("the gate saw %d arrivals from rejected traffic", after-before)
	}
	t.Run("the gate's ports take nothing that was not redirected", func(t *testing.T) {
		_, err := net.DialTimeout("tcp4", fmt.Sprintf("127.0.0.1:%d", p.ports.proxy), 2*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("direct connection to the proxy port: %v, want refused", err)
		}
	})
	t.Run("root in a user namespace inside cannot change the namespace", func(t *testing.T) {
		if _, err := exec.LookPath("unshare"); err != nil {
			t.Skip("no unshare(1)")
		}
		for _, args := range [][]string{{"ip", "link", "set", "eth0", "down"}, {"ip", "addr", "add", "10.9.9.9/32", "dev", "eth0"}, {"ip", "route", "del", "default"}} {
			cmd := exec.Command("nsenter", append([]string{"--net=" + ns.Path(), "unshare", "--user", "--map-root-user"}, args...)...)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "Operation not permitted") {
				t.Fatalf("%v: %v %s", args, err, out)
			}
		}
	})
}

func setBroadcast(c net.Conn) error {
	raw, err := c.(*net.UDPConn).SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	_ = raw.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1) })
	return serr
}

func TestRecycleAndClose(t *testing.T) {
	p := newTestPool(t, newStandIn(), 2, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// Three held: the bound; a fourth waits until one is returned.
	var held []*NS
	for range 3 {
		ns, err := p.Get(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, ns)
	}
	short, c2 := context.WithTimeout(ctx, 200*time.Millisecond)
	if _, err := p.Get(short); err == nil {
		t.Fatal("a fourth namespace beyond Max")
	}
	c2()
	// One left a socket open (a TIME_WAIT-less close leaves none; a listener does): destroyed,
	// not recycled. The others come back.
	var ln net.Listener
	inside(t, held[0], func() { ln, _ = net.Listen("tcp4", "127.0.0.1:0") })
	addrs := map[netip.Addr]bool{}
	for _, ns := range held {
		addrs[ns.Addr] = true
		p.Put(ns)
	}
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	st := p.Stats()
	if st.Recycled < 1 || st.Destroyed < 1 {
		t.Fatalf("stats %+v: want a recycled namespace and the one with a socket destroyed", st)
	}
	ns, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !addrs[ns.Addr] {
		t.Fatalf("got a new namespace %s, want a recycled one", ns.Addr)
	}
	ln.Close()
	p.Put(ns)
	prefix, table := p.LinkPrefix(), p.Table()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	assertGone(t, prefix, table)
}

// assertGone fails if a link of prefix or the table exists.
func assertGone(t *testing.T, prefix, table string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		links := fakenet.LinksWith(prefix)
		if len(links) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("links left: %v", links)
		}
	}
	ts, err := listTables(table)
	if err != nil || len(ts) != 0 {
		t.Fatalf("tables left: %v %v", ts, err)
	}
}

// TestKilledOwnerLeavesOnlyTheTable: after a SIGKILL of a process holding namespaces, the kernel
// removes them with their pairs; ReapTable removes the table.
func TestKilledOwnerLeavesOnlyTheTable(t *testing.T) {
	needRoot(t)
	table := testTable()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOwnerHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "AXO_CALLNET_HELPER="+table, "AXO_CALLNET_DIR="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	prefix := ""
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
			prefix = p
			break
		}
	}
	if prefix == "" {
		t.Fatal("the helper did not get ready")
	}
	if n := len(fakenet.LinksWith(prefix)); n != 3 {
		t.Fatalf("%d links of the helper, want 3", n)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if ts, _ := listTables(table); len(ts) != 1 {
		t.Fatalf("table %s: %v", table, ts)
	}
	if err := ReapTable(table); err != nil {
		t.Fatal(err)
	}
	assertGone(t, prefix, table)
}

func TestOwnerHelper(t *testing.T) {
	table := os.Getenv("AXO_CALLNET_HELPER")
	if table == "" {
		t.Skip("only run by TestKilledOwnerLeavesOnlyTheTable")
	}
	p, err := New(Config{Table: table, RunDir: os.Getenv("AXO_CALLNET_DIR"), Gate: newStandIn(), Ready: 2, Max: 4}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Get(context.Background()); err != nil { // one in use, two ready
		t.Fatal(err)
	}
	if err := p.WaitReady(context.Background()); err != nil {
		t.Fatal(err)
	}
	fmt.Println("READY " + p.LinkPrefix())
	time.Sleep(time.Minute)
}

// BenchmarkApplyPolicy: what a call with a network policy adds at claim time: a prepared
// namespace from the pool and its policy bound (NS.BindCall: in the gate, and a UDP grant's
// redirect) (then released and the namespace returned, untimed). Reports p50 and p95.
func BenchmarkApplyPolicy(b *testing.B) {
	needRoot(b)
	gate, err := egress.NewGate(egress.GateConfig{Resolver: "127.0.0.1:53"})
	if err != nil {
		b.Fatal(err)
	}
	p, err := New(Config{Table: testTable(), RunDir: b.TempDir(), Gate: gate, Ready: 2, Max: 8}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	for _, bc := range []struct {
		name     string
		patterns []string
	}{
		{"tcp", []string{"api.example.com:443", "*.pypi.org:443", "203.0.113.0/24:5432/tcp"}},
		// A UDP grant adds its redirect rule (one nftables transaction) to the binding.
		{"udp-grant", []string{"api.example.com:443", "203.0.113.0/24:443/udp"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ps, _ := egress.ParsePatterns(bc.patterns)
			pol := egress.NewPolicy(ps...)
			ctx := context.Background()
			var d []time.Duration
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				if err := p.WaitReady(ctx); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				t0 := time.Now()
				ns, err := p.Get(ctx)
				if err != nil {
					b.Fatal(err)
				}
				release := ns.BindCall(gate, pol, fmt.Sprint("call-", i))
				d = append(d, time.Since(t0))
				b.StopTimer()
				release()
				p.Put(ns)
				b.StartTimer()
			}
			report(b, d)
		})
	}
}

// BenchmarkNetnsCreate: making a namespace with its pair, addresses, routes and resolv.conf (what
// binding the network at claim time instead of at creation would add to every call), and
// destroying it.
func BenchmarkNetnsCreate(b *testing.B) {
	needRoot(b)
	p, err := New(Config{Table: testTable(), RunDir: b.TempDir(), Gate: newStandIn(), Ready: 1, Max: 4}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	var d, dd []time.Duration
	for b.Loop() {
		t0 := time.Now()
		ns, err := p.create()
		if err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(t0))
		t1 := time.Now()
		p.destroyCreated(ns)
		dd = append(dd, time.Since(t1))
	}
	report(b, d)
	slices.Sort(dd)
	b.ReportMetric(float64(dd[len(dd)/2].Microseconds())/1000, "destroy-p50-ms")
}

func report(b *testing.B, d []time.Duration) {
	slices.Sort(d)
	b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(d[len(d)*95/100].Microseconds())/1000, "p95-ms")
}

// TestNamespacesForVMs: a namespace for VMs carries no address of its own; its tap is joined to
// the host side at layer 2 (an ARP request written into the tap as the guest would, from the
// namespace's address, is answered by the host side through it); a VMM's tap goes with its
// descriptor and a persistent one is removed when the namespace is recycled, so the next VM's
// namespace holds only lo and eth0.
func TestNamespacesForVMs(t *testing.T) {
	needRoot(t)
	p, err := New(Config{Table: testTable(), RunDir: t.TempDir(), Gate: newStandIn(), Ready: 1, Max: 1, ForVMs: true}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ns.ResolvConf != "" {
		t.Errorf("a namespace for VMs has a resolv.conf: %s", ns.ResolvConf)
	}
	if as := addrsInside(t, ns, "eth0"); len(as) != 0 {
		t.Fatalf("eth0 of a namespace for VMs has addresses %v", as)
	}
	tap, err := ns.OpenTap()
	if err != nil {
		t.Fatal(err)
	}
	guestMAC := net.HardwareAddr{0x02, 0xa0, 0xc0, 0xa7, 0, 1}
	// virtio_net_hdr (10 bytes, no offloads) + Ethernet + ARP request "who has Peer, tell Addr".
	frame := make([]byte, 10, 10+42)
	frame = append(frame, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	frame = append(frame, guestMAC...)
	frame = append(frame, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1)
	frame = append(frame, guestMAC...)
	frame = append(frame, ns.Addr.AsSlice()...)
	frame = append(frame, 0, 0, 0, 0, 0, 0)
	frame = append(frame, ns.Peer.AsSlice()...)
	buf := make([]byte, 2048)
	answered := false
	deadline, resend := time.Now().Add(5*time.Second), time.Time{}
	for !answered {
		if time.Now().After(resend) {
			// As a guest does, ask again every 200 ms (a first request can be lost while the
			// host side's link settles).
			if _, err := tap.Write(frame); err != nil {
				t.Fatal(err)
			}
			resend = time.Now().Add(200 * time.Millisecond)
		}
		// The tap is not in Go's poller (a device file): poll it here.
		pfd := []unix.PollFd{{Fd: int32(tap.Fd()), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 50); err != nil || time.Now().After(deadline) {
			t.Fatalf("no ARP reply from the host side through the tap: %v", err)
		} else if n == 0 {
			continue
		}
		n, err := unix.Read(int(tap.Fd()), buf)
		if err != nil || n < 10 {
			t.Fatalf("read the tap: %d %v", n, err)
		}
		f := buf[10:n]
		// An ARP reply to the guest's MAC saying Peer is at some MAC.
		answered = len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 && net.HardwareAddr(f[0:6]).String() == guestMAC.String() &&
			netip.AddrFrom4([4]byte(f[28:32])) == ns.Peer
	}
	tap.Close()
	p.Put(ns)
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.Addr != ns.Addr || p.Stats().Recycled != 1 {
		t.Fatalf("the namespace was not recycled: %s after %s, %+v", again.Addr, ns.Addr, p.Stats())
	}
	if ls := linksInside(t, again); !slices.Equal(ls, []string{"eth0", "lo"}) {
		t.Fatalf("links of the recycled namespace: %v", ls)
	}
	// A persistent tap for a VMM that opens it by name, owned by the VMM's uid.
	if err := again.MakeTap(0x71010000, 0x71010000); err != nil {
		t.Fatal(err)
	}
	if ls := linksInside(t, again); !slices.Equal(ls, []string{"eth0", "lo", TapName}) {
		t.Fatalf("links with a persistent tap: %v", ls)
	}
	p.Put(again)
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	third, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Put(third)
	if ls := linksInside(t, third); !slices.Equal(ls, []string{"eth0", "lo"}) {
		t.Fatalf("the persistent tap survived the recycling: %v", ls)
	}
}

func linksInside(t *testing.T, ns *NS) []string {
	t.Helper()
	h, err := netlink.NewHandleAt(nsHandle(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range ls {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

func addrsInside(t *testing.T, ns *NS, link string) []netlink.Addr {
	t.Helper()
	h, err := netlink.NewHandleAt(nsHandle(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	as, err := h.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	return as
}

// TestUDPGrants: a call's UDP grant redirects datagrams to that range and port, and nothing else,
// to the gate's relay with their original destination; port 53 still goes to the DNS server;
// other UDP is still rejected at once; after the release (and after recycling) the grant is gone.
func TestUDPGrants(t *testing.T) {
	g := newStandIn()
	p := newTestPool(t, g, 1, 1)
	ctx := context.Background()
	ns, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ps, err := egress.ParsePatterns([]string{"203.0.113.0/24:443/udp", "198.51.100.0/24:53/udp", "192.0.2.0/24:443/tcp"})
	if err != nil {
		t.Fatal(err)
	}
	release, err := ns.AllowUDP(egress.NewPolicy(ps...).CIDRs())
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(dst string) (string, error) {
		var c net.Conn
		inside(t, ns, func() { c, err = net.Dial("udp4", dst) })
		if err != nil {
			return "", err
		}
		defer c.Close()
		_, _ = c.Write([]byte("x"))
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 128)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	if got, err := exchange("203.0.113.7:443"); err != nil || got != "relayed 203.0.113.7:443" {
		t.Fatalf("granted datagram: %q %v, want the relay to see its original destination", got, err)
	}
	for _, dst := range []string{"203.0.113.7:444", "192.0.2.1:443", "198.51.100.9:80"} {
		start := time.Now()
		if got, err := exchange(dst); err == nil || time.Since(start) > time.Second {
			t.Errorf("%s, not granted over UDP: %q %v after %v, want a rejection at once", dst, got, err, time.Since(start))
		}
	}
	dnsBefore := len(g.dns)
	if got, err := exchange("198.51.100.53:53"); err != nil || !strings.Contains(got, "x") || len(g.dns) != dnsBefore+1 {
		t.Errorf("port 53, granted over UDP, went past the DNS server: %q %v", got, err)
	}
	release()
	if got, err := exchange("203.0.113.7:443"); err == nil {
		t.Errorf("after the release the grant still works: %q", got)
	}
	// A grant left behind (no release) is gone once the namespace is recycled.
	if _, err := ns.AllowUDP(egress.NewPolicy(ps...).CIDRs()); err != nil {
		t.Fatal(err)
	}
	p.Put(ns)
	if ns, err = p.Get(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Put(ns)
	if got, err := exchange("203.0.113.7:443"); err == nil {
		t.Errorf("a recycled namespace kept the last call's grant: %q", got)
	}
}
