package egress

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/egresstest/testnet"
)

// benchWorld: an HTTP-ish server on 127.0.0.1 that answers a request head with a small reply, or
// with /big, 100 MiB; a gate whose connections all "were going to" that server's port (what
// SO_ORIGINAL_DST would say), bound for source 127.0.0.2.
type benchWorld struct {
	*testGate
	server netip.AddrPort
}

const bigTransfer = 100 << 20

func newBenchWorld(b *testing.B) *benchWorld {
	b.Helper()
	chunk := make([]byte, 1<<20)
	srv := startServer(b, "127.0.0.1:0", func(c net.Conn) {
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		for { // the rest of the head
			l, err := br.ReadString('\n')
			if err != nil || l == "\r\n" {
				break
			}
		}
		if line == "GET /big HTTP/1.1\r\n" {
			for n := 0; n < bigTransfer; n += len(chunk) {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	up := testnet.StartDNS(b, "api.allowed.test. 300 IN A 127.0.0.1")
	tg := newTestGate(b, GateConfig{Resolver: up.Addr, Logger: discardLogger(),
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	dst := netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), srv.port)
	tg.origDst = func(net.Conn) (netip.AddrPort, error) { return dst, nil }
	b.Cleanup(tg.Bind(netip.MustParseAddr("127.0.0.2"), NewPolicy(mustPatterns(b, fmt.Sprintf("api.allowed.test:%d", srv.port))...), "bench"))
	return &benchWorld{testGate: tg, server: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), srv.port)}
}

// exchange connects from 127.0.0.2 to addr, sends a request head for path and reads to EOF.
func (w *benchWorld) exchange(b *testing.B, addr, path string) int64 {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api.allowed.test:%d\r\n\r\n", path, w.server.Port())
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

func percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkProxyConnection: a whole short connection (connect, request head, reply, close),
// direct and through the proxy (Host header read, name resolved — cached after the first —
// dialed, relayed). Reports p50 of each.
func BenchmarkProxyConnection(b *testing.B) {
	w := newBenchWorld(b)
	for _, tc := range []struct{ name, addr string }{{"direct", w.server.String()}, {"proxy", w.proxyAddr}} {
		b.Run(tc.name, func(b *testing.B) {
			w.exchange(b, tc.addr, "/") // warm (the proxy's DNS cache)
			ds := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				if n := w.exchange(b, tc.addr, "/"); n == 0 {
					b.Fatal("empty reply")
				}
				ds = append(ds, time.Since(t0))
			}
			b.ReportMetric(float64(percentile(ds, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(ds, 0.9).Microseconds())/1000, "p90-ms")
		})
	}
}

// BenchmarkProxyThroughput: 100 MiB from the server, direct and through the proxy,
// alternating in every iteration so that both see the same load (this machine is shared): reports
// the median rate of each and their ratio, and the CPU time of this process (server, client and
// proxy) per transfer, the figure least moved by other load. Run it with a small -benchtime
// (e.g. 5x): every iteration moves 200 MiB.
func BenchmarkProxyThroughput(b *testing.B) {
	w := newBenchWorld(b)
	b.SetBytes(2 * bigTransfer)
	var direct, proxy, directCPU, proxyCPU []time.Duration
	for range b.N {
		for _, tc := range []struct {
			addr     string
			ds, cpus *[]time.Duration
		}{{w.server.String(), &direct, &directCPU}, {w.proxyAddr, &proxy, &proxyCPU}} {
			t0, c0 := time.Now(), processCPU(b)
			if n := w.exchange(b, tc.addr, "/big"); n != bigTransfer {
				b.Fatalf("got %d bytes", n)
			}
			*tc.ds = append(*tc.ds, time.Since(t0))
			*tc.cpus = append(*tc.cpus, processCPU(b)-c0)
		}
	}
	rate := func(d time.Duration) float64 { return float64(bigTransfer) / (1 << 20) / d.Seconds() }
	d, p := percentile(direct, 0.5), percentile(proxy, 0.5)
	b.ReportMetric(rate(d), "direct-MiB/s")
	b.ReportMetric(rate(p), "proxy-MiB/s")
	b.ReportMetric(100*d.Seconds()/p.Seconds(), "proxy-%-of-direct")
	b.ReportMetric(float64(percentile(directCPU, 0.5).Microseconds())/1000, "direct-cpu-ms")
	b.ReportMetric(float64(percentile(proxyCPU, 0.5).Microseconds())/1000, "proxy-cpu-ms")
}

// processCPU is the user + system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDeniedConnection: from connect to the client seeing the connection fail, for a bare
// address no CIDR pattern allows (refused at accept) and for a name the policy does not allow
// (refused once the request head names it).
func BenchmarkDeniedConnection(b *testing.B) {
	w := newBenchWorld(b)
	for _, tc := range []struct {
		name string
		dst  netip.AddrPort
		head string
	}{
		{"address", netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), 5432), ""},
		{"name", netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), w.server.Port()), "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			w.origDst = func(net.Conn) (netip.AddrPort, error) { return tc.dst, nil }
			ds := make([]time.Duration, 0, b.N)
			for range b.N {
				t0 := time.Now()
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
				c, err := d.Dial("tcp", w.proxyAddr)
				if err == nil {
					io.WriteString(c, tc.head)
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					n, _ := c.Read(make([]byte, 1))
					c.Close()
					if n != 0 {
						b.Fatal("a denied connection returned data")
					}
				}
				ds = append(ds, time.Since(t0))
			}
			b.ReportMetric(float64(percentile(ds, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(ds, 0.99).Microseconds())/1000, "p99-ms")
		})
	}
}
