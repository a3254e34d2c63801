package egress

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/egresstest/testnet"
	"github.com/miekg/dns"
)

// startFakeDNS is the fake upstream DNS server that logs every question it receives.
func startFakeDNS(t testing.TB, records ...string) *testnet.DNS {
	return testnet.StartDNS(t, records...)
}

// testGate is a Gate with its DNS server on 127.0.0.1 (UDP and TCP) and its proxy listening on
// 127.0.0.1. Connections to the proxy say where they were going through origDst, keyed by the
// client's source address and port (what nftables' REDIRECT would have recorded).
type testGate struct {
	*Gate
	dnsAddr   string
	proxyAddr string
	mu        sync.Mutex
	dst       map[netip.AddrPort]netip.AddrPort
	logs      *logBuffer
}

type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestGate(t testing.TB, cfg GateConfig) *testGate {
	t.Helper()
	lb := &logBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(lb), nil))
	}
	g, err := NewGate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tg := &testGate{Gate: g, dst: map[netip.AddrPort]netip.AddrPort{}, logs: lb}
	g.origDst = func(c net.Conn) (netip.AddrPort, error) {
		// The client registers its destination once its dial returned: wait for it.
		src := netip.MustParseAddrPort(c.RemoteAddr().String())
		for range 200 {
			tg.mu.Lock()
			d, ok := tg.dst[src]
			tg.mu.Unlock()
			if ok {
				return d, nil
			}
			time.Sleep(5 * time.Millisecond)
		}
		return netip.AddrPort{}, io.EOF
	}
	ctx, cancel := context.WithCancel(context.Background())
	pc, dln := testnet.ListenUDPAndTCP(t)
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg.dnsAddr, tg.proxyAddr = pc.LocalAddr().String(), pln.Addr().String()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); g.ServeDNS(ctx, pc, dln) }()
	go func() { defer wg.Done(); g.ServeTCP(ctx, pln) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return tg
}

// dialVia connects from src to the proxy as if the container had dialed dst.
func (tg *testGate) dialVia(t testing.TB, src string, dst string) net.Conn {
	t.Helper()
	c, err := tg.dialViaErr(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dialViaErr is dialVia returning the error (the proxy may reset before connect returns).
func (tg *testGate) dialViaErr(src string, dst string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", tg.proxyAddr)
	if err != nil {
		return nil, err
	}
	tg.mu.Lock()
	tg.dst[netip.MustParseAddrPort(c.LocalAddr().String())] = netip.MustParseAddrPort(dst)
	tg.mu.Unlock()
	return c, nil
}

// dnsQuery asks the gate's DNS server from src.
func (tg *testGate) dnsQuery(t testing.TB, src, name string, qtype uint16, tcp bool) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Timeout: 5 * time.Second}
	if tcp {
		c.Net = "tcp"
		c.Dialer = &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	} else {
		c.Dialer = &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}}
	}
	r, _, err := c.Exchange(m, tg.dnsAddr)
	if err != nil {
		t.Fatalf("query %s from %s: %v", name, src, err)
	}
	return r
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
