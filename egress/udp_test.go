package egress

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestServeUDP: the relay forwards a bound source's datagrams to a destination a CIDR pattern
// allows over UDP and returns the replies; it drops (and counts) a destination no pattern allows
// over UDP, one in the deny set even if a pattern allows it, an unbound source, and the flows of
// a released binding.
func TestServeUDP(t *testing.T) {
	echo, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = echo.WriteTo(append([]byte("echo "), buf[:n]...), from)
		}
	}()
	echoAP := echo.LocalAddr().(*net.UDPAddr).AddrPort()
	g, err := NewGate(GateConfig{Resolver: "127.0.0.1:53", AllowPrivate: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}
	relay, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Where each client "was going": the test's stand-in for the kernel's connection tracking.
	var dests sync.Map // netip.AddrPort → netip.AddrPort
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- g.ServeUDP(ctx, relay, func(src netip.AddrPort) (netip.AddrPort, error) {
			d, _ := dests.Load(src)
			dst, _ := d.(netip.AddrPort)
			return dst, nil
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeUDP: %v", err)
		}
	}()
	client := func(dst netip.AddrPort) net.Conn {
		c, err := net.DialUDP("udp4", nil, relay.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		dests.Store(c.LocalAddr().(*net.UDPAddr).AddrPort(), dst)
		return c
	}
	ask := func(c net.Conn) (string, error) {
		_, _ = c.Write([]byte("ping"))
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		return string(buf[:n]), err
	}
	ok := client(echoAP)
	wrongPort := client(netip.AddrPortFrom(echoAP.Addr(), echoAP.Port()+1))
	denied := client(netip.MustParseAddrPort("10.20.30.40:53000"))
	port := strconv.Itoa(int(echoAP.Port()))
	next := strconv.Itoa(int(echoAP.Port()) + 1)
	pol := NewPolicy(mustPatterns(t, "127.0.0.1/32:"+port+"/udp", "10.0.0.0/8:53000/udp", "127.0.0.1/32:"+next+"/tcp")...)

	if got, err := ask(ok); err == nil {
		t.Fatalf("an unbound source was relayed: %q", got)
	}
	release := g.Bind(netip.MustParseAddr("127.0.0.1"), pol, "call-1")
	if got, err := ask(ok); err != nil || got != "echo ping" {
		t.Fatalf("allowed flow: %q %v", got, err)
	}
	for name, c := range map[string]net.Conn{"a port allowed over TCP only": wrongPort, "the deny set": denied} {
		if got, err := ask(c); err == nil {
			t.Errorf("%s: relayed %q", name, got)
		}
	}
	release()
	if got, err := ask(ok); err == nil {
		t.Errorf("after the release: %q", got)
	}
	if st := g.Stats(); st.ConnsDenied < 4 {
		t.Errorf("denied %d datagrams, want 4 or more counted", st.ConnsDenied)
	}
}
