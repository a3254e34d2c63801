package egress

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/egresstest"
	"github.com/axocoatl/isolation/internal/egresstest/testnet"
)

// server is a loopback TCP server counting its connections; serve runs per connection.
type server struct {
	ln   net.Listener
	hits atomic.Int64
	port uint16
}

func startServer(t testing.TB, addr string, serve func(net.Conn)) *server {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, port: netip.MustParseAddrPort(ln.Addr().String()).Port()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.hits.Add(1)
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

// proxyWorld is the namespace-free stand-in for the fake internet: the "public" servers listen
// on 127.0.0.1 (reopened by allow_private), canaries on 127.0.0.6 (denied), the fake DNS maps
// names to them, and the container is the source address 127.0.0.2.
type proxyWorld struct {
	*testGate
	up       *testnet.DNS
	api      *server // TLS for api.allowed.test and HTTP, on 127.0.0.1:port
	canary   *server // 127.0.0.6:port
	banner   *server // server-first, 127.0.0.8
	port     uint16
	pool     *x509.CertPool
	policy   Policy
	releases []func()
}

func newProxyWorld(t *testing.T) *proxyWorld {
	t.Helper()
	t.Cleanup(egresstest.MarkTestNetPublic())
	cert, pool := testnet.Cert(t, "api.allowed.test")
	w := &proxyWorld{pool: pool}
	w.api = startServer(t, "127.0.0.1:0", func(c net.Conn) {
		br := bufio.NewReader(c)
		b, _ := br.Peek(1)
		if len(b) == 1 && b[0] == 0x16 {
			tc := tls.Server(&bufConn{c, br}, &tls.Config{Certificates: []tls.Certificate{cert}})
			if tc.Handshake() != nil {
				return
			}
			fmt.Fprintf(tc, "hello %s\n", tc.ConnectionState().ServerName)
			io.Copy(tc, tc) // echo until the client half-closes
			return
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nhttp "+req.Host[:4])
	})
	w.port = w.api.port
	w.canary = startServer(t, fmt.Sprintf("127.0.0.6:%d", w.port), func(c net.Conn) { io.WriteString(c, "CANARY\n") })
	w.banner = startServer(t, "127.0.0.8:0", func(c net.Conn) { io.WriteString(c, "220 banner first\n") })
	w.up = startFakeDNS(t,
		"api.allowed.test. 300 IN A 127.0.0.1",
		"evilallowed.test. 300 IN A 127.0.0.1",
		"allowed.test.evil.test. 300 IN A 127.0.0.1",
		"evil.test. 300 IN A 127.0.0.1",
		"meta.allowed.test. 300 IN A 169.254.169.254",
		"canary.allowed.test. 300 IN A 127.0.0.6",
		"v6.allowed.test. 300 IN AAAA ::1",
	)
	w.testGate = newTestGate(t, GateConfig{Resolver: w.up.Addr, FirstBytesTimeout: 300 * time.Millisecond,
		AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("127.0.0.8/32")}})
	w.policy = NewPolicy(mustPatterns(t,
		fmt.Sprintf("api.allowed.test:%d", w.port), fmt.Sprintf("*.allowed.test:%d", w.port),
		fmt.Sprintf("127.0.0.8:%d", w.banner.port), fmt.Sprintf("127.0.0.6:%d", w.port+1))...)
	w.releases = append(w.releases, w.Bind(netip.MustParseAddr("127.0.0.2"), w.policy, "call-7"))
	return w
}

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// tlsVia opens TLS with sni through the proxy, from src, as if dst had been dialed.
func (w *proxyWorld) tlsVia(t *testing.T, src, dst, sni string) (*tls.Conn, error) {
	c, err := w.dialViaErr(src, dst)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, &tls.Config{ServerName: sni, RootCAs: w.pool, InsecureSkipVerify: sni == ""})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// assertReset asserts c fails (reset or closed) without sending anything useful.
func assertRefused(t *testing.T, c net.Conn, send string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if send != "" {
		c.Write([]byte(send))
	}
	b, err := io.ReadAll(c)
	if err == nil && len(b) == 0 {
		return // closed
	}
	if len(b) > 0 {
		t.Fatalf("refused connection returned %q", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("refused connection hangs: %v", err)
	}
}

func TestProxyTLSAllowed(t *testing.T) {
	w := newProxyWorld(t)
	// The container resolved some address and dialed it; the proxy dials the name instead.
	tc, err := w.tlsVia(t, "127.0.0.2", fmt.Sprintf("203.0.113.10:%d", w.port), "api.allowed.test")
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil || line != "hello api.allowed.test\n" {
		t.Fatalf("got %q, %v", line, err)
	}
	// The certificate is the server's own: TLS was not terminated by the proxy.
	if cs := tc.ConnectionState(); cs.PeerCertificates[0].Subject.CommonName != "api.allowed.test" {
		t.Fatalf("peer certificate %v", cs.PeerCertificates[0].Subject)
	}
	if w.canary.hits.Load() != 0 {
		t.Fatal("canary hit")
	}
}

func TestProxyHalfClose(t *testing.T) {
	w := newProxyWorld(t)
	tc, err := w.tlsVia(t, "127.0.0.2", fmt.Sprintf("203.0.113.10:%d", w.port), "api.allowed.test")
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	r := bufio.NewReader(tc)
	r.ReadString('\n')
	io.WriteString(tc, "ping\n")
	tc.CloseWrite() // TLS close_notify, then the proxy half-closes upstream
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "ping\n" {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
}

func TestProxyHTTPHost(t *testing.T) {
	w := newProxyWorld(t)
	for _, tc := range []struct {
		host string
		ok   bool
	}{
		{fmt.Sprintf("api.allowed.test:%d", w.port), true},
		{"api.allowed.test", true},
		{"evil.test", false},
		{"evilallowed.test", false},
		{"allowed.test.evil.test", false},
		{"127.0.0.1", false},
		{"canary.allowed.test", false},
	} {
		c := w.dialVia(t, "127.0.0.2", fmt.Sprintf("203.0.113.10:%d", w.port))
		req := "GET / HTTP/1.1\r\nHost: " + tc.host + "\r\n\r\n"
		if !tc.ok {
			assertRefused(t, c, req)
			continue
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		b, _ := io.ReadAll(c)
		c.Close()
		if !strings.HasSuffix(string(b), "http api.") {
			t.Errorf("Host %s: got %q", tc.host, b)
		}
	}
	if w.canary.hits.Load() != 0 || w.up.Saw("evil") || w.up.Saw("127.0.0.1") {
		t.Fatalf("canary hits %d; upstream DNS saw %v", w.canary.hits.Load(), w.up.Queries())
	}
}

func TestProxyDenied(t *testing.T) {
	w := newProxyWorld(t)
	apiHits := w.api.hits.Load()
	dst := fmt.Sprintf("203.0.113.10:%d", w.port)
	for _, tc := range []struct {
		name, src, dst, sni string
	}{
		{"name not allowed", "127.0.0.2", dst, "evil.test"},
		{"suffix trick", "127.0.0.2", dst, "evilallowed.test"},
		{"suffix trick 2", "127.0.0.2", dst, "allowed.test.evil.test"},
		{"allowed name resolving to metadata", "127.0.0.2", dst, "meta.allowed.test"},
		{"allowed name resolving to a denied loopback address", "127.0.0.2", dst, "canary.allowed.test"},
		{"allowed name resolving to ::1", "127.0.0.2", dst, "v6.allowed.test"},
		{"allowed name, port not allowed", "127.0.0.2", fmt.Sprintf("203.0.113.10:%d", w.port+2), "api.allowed.test"},
		{"unbound source", "127.0.0.3", dst, "api.allowed.test"},
		{"bare IP literal (no SNI)", "127.0.0.2", fmt.Sprintf("127.0.0.6:%d", w.port), ""},
		{"CIDR pattern in the deny set", "127.0.0.2", fmt.Sprintf("127.0.0.6:%d", w.port+1), ""},
		{"to the proxy itself", "127.0.0.2", w.proxyAddr, "api.allowed.test"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.tlsVia(t, tc.src, tc.dst, tc.sni)
			if err == nil {
				t.Fatal("handshake succeeded")
			}
		})
	}
	if n := w.canary.hits.Load(); n != 0 {
		t.Errorf("canary hit %d times", n)
	}
	if n := w.api.hits.Load(); n != apiHits {
		t.Errorf("the allowed server was reached %d times by denied connections", n-apiHits)
	}
	if w.up.Saw("evil") {
		t.Errorf("upstream DNS saw a denied name: %v", w.up.Queries())
	}
	logs := w.logs.String()
	for _, s := range []string{"call_id=call-7", "name=evil.test", "deny set", "no policy bound"} {
		if !strings.Contains(logs, s) {
			t.Errorf("logs lack %q:\n%s", s, logs)
		}
	}
	if s := w.Stats(); s.ConnsDenied < 11 {
		t.Errorf("stats %+v", s)
	}
}

// TestProxyLyingSNI: the container dials the canary's address with an allowed SNI; the proxy
// dials the allowed name, so the canary is never reached.
func TestProxyLyingSNI(t *testing.T) {
	w := newProxyWorld(t)
	tc, err := w.tlsVia(t, "127.0.0.2", fmt.Sprintf("127.0.0.6:%d", w.port), "api.allowed.test")
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(tc).ReadString('\n')
	tc.Close()
	if line != "hello api.allowed.test\n" || w.canary.hits.Load() != 0 {
		t.Fatalf("got %q; canary hits %d", line, w.canary.hits.Load())
	}
}

func TestProxyCIDRServerFirst(t *testing.T) {
	w := newProxyWorld(t)
	c := w.dialVia(t, "127.0.0.2", fmt.Sprintf("127.0.0.8:%d", w.banner.port))
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "220 banner first\n" {
		t.Fatalf("server-first protocol through a CIDR pattern: %q, %v", line, err)
	}
}

func TestProxyNoBytesTimesOut(t *testing.T) {
	w := newProxyWorld(t)
	c := w.dialVia(t, "127.0.0.2", fmt.Sprintf("203.0.113.10:%d", w.port))
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the proxy held a silent connection past FirstBytesTimeout")
	}
}

func TestProxyReleaseCutsConnections(t *testing.T) {
	w := newProxyWorld(t)
	release := w.Bind(netip.MustParseAddr("127.0.0.4"), w.policy, "call-8")
	tc, err := w.tlsVia(t, "127.0.0.4", fmt.Sprintf("203.0.113.10:%d", w.port), "api.allowed.test")
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	r := bufio.NewReader(tc)
	r.ReadString('\n')
	release()
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection alive after release")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("connection not cut by release")
	}
	if _, err := w.tlsVia(t, "127.0.0.4", fmt.Sprintf("203.0.113.10:%d", w.port), "api.allowed.test"); err == nil {
		t.Fatal("connection after release succeeded")
	}
}

func TestDialer(t *testing.T) {
	w := newProxyWorld(t)
	d := w.Dialer(w.policy, "wasm-1")
	ctx := context.Background()
	c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("api.allowed.test:%d", w.port))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	for _, addr := range []string{
		fmt.Sprintf("evil.test:%d", w.port),
		fmt.Sprintf("meta.allowed.test:%d", w.port),
		fmt.Sprintf("canary.allowed.test:%d", w.port),
		fmt.Sprintf("127.0.0.1:%d", w.port),
		fmt.Sprintf("127.0.0.6:%d", w.port+1),
		fmt.Sprintf("api.allowed.test:%d", w.port+2),
	} {
		if _, err := d.DialContext(ctx, "tcp", addr); !errors.Is(err, ErrDenied) {
			t.Errorf("dial %s: %v, want ErrDenied", addr, err)
		}
	}
	if _, err := d.DialContext(ctx, "udp", "api.allowed.test:53"); !errors.Is(err, ErrDenied) {
		t.Errorf("udp: %v", err)
	}
	if w.canary.hits.Load() != 0 {
		t.Error("canary hit")
	}
}
