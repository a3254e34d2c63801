package egress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ServeTCP proxies the containers' TCP connections, which nftables redirects to ln, until ctx
// ends (then ln and every proxied connection are closed). For each connection:
//
//   - its source address must be bound (Bind), else it is reset at once;
//   - its original destination (SO_ORIGINAL_DST) in a CIDR pattern of the policy, and outside
//     the deny set, is dialed as it is, without reading anything first (server-first protocols
//     work);
//   - otherwise the TLS ClientHello's SNI, or the HTTP/1 Host header, must match a name pattern
//     with the original destination's port: the proxy resolves that name itself through the
//     gate's resolver and dials the first of its addresses outside the deny set. The address the
//     container connected to plays no part, so a lying SNI or a rebound DNS answer reaches only
//     what the policy allows. TLS is never terminated; the bytes read are replayed upstream.
//
// Everything else is reset (RST) as soon as it is known, logged with the call id, and counted.
func (g *Gate) ServeTCP(ctx context.Context, ln net.Listener) error {
	if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil {
		g.ownAddrs.Store(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), struct{}{})
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	connCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// EMFILE and the like: back off rather than spin or give up.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		select {
		case g.connSem <- struct{}{}:
		default:
			g.refuse(c, "", "", fmt.Sprintf("%d proxied connections open (MaxConns)", cap(g.connSem)))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-g.connSem }()
			g.proxy(connCtx, c)
		}()
	}
}

// proxy handles one redirected connection.
func (g *Gate) proxy(ctx context.Context, c net.Conn) {
	src := addrOf(c.RemoteAddr())
	b := g.binding(src)
	if b == nil {
		g.refuse(c, "", "", "no policy bound to source "+src.String())
		return
	}
	dst, err := g.origDst(c)
	if err != nil {
		g.refuse(c, b.callID, "", "original destination unknown: "+err.Error())
		return
	}
	dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if _, own := g.ownAddrs.Load(dst); own {
		g.refuse(c, b.callID, "", "connected to the proxy itself")
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(b.ctx, cancel)
	defer stop()

	var up net.Conn
	name := ""
	switch {
	case b.policy.AllowsAddr(dst, ProtoTCP):
		up, err = g.dialAddr(ctx, b.policy, dst)
		if err != nil {
			g.refuse(c, b.callID, "", reasonOf(dst.String(), err))
			return
		}
	case !b.policy.hasNamePort(dst.Port()):
		g.refuse(c, b.callID, "", fmt.Sprintf("%s: no pattern allows port %d (an address needs a CIDR pattern)", dst, dst.Port()))
		return
	default:
		var head []byte
		name, head, err = g.readName(c)
		if err != nil {
			g.refuse(c, b.callID, "", fmt.Sprintf("%s: %v", dst, err))
			return
		}
		up, err = g.dialName(ctx, b.policy, name, dst.Port())
		if err != nil {
			g.refuse(c, b.callID, name, reasonOf(dst.String(), err))
			return
		}
		if _, err := up.Write(head); err != nil {
			up.Close()
			c.Close()
			return
		}
	}
	g.allowed.Add(1)
	g.log.Debug("egress allowed", "call_id", b.callID, "name", name, "dst", dst.String(), "upstream", up.RemoteAddr().String())
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetReadBuffer(containerSockBuf)  //nolint:errcheck // autotuned as before if refused
		tc.SetWriteBuffer(containerSockBuf) //nolint:errcheck
	}
	relay(ctx, c, up)
}

// containerSockBuf fixes the socket buffers of the container's side of a relay, one hop over a
// veth: ample there (at 50 µs round trips 256 KiB carries GB/s), where the kernel's autotuning
// grows them to MiBs per socket, which fall out of the CPU's caches and multiply by MaxConns. It
// cost 66–71 ms of CPU per 100 MiB relayed against 77–80 ms autotuned (BenchmarkProxyThroughput;
// RATIONALE: Egress proxy copy). The upstream side keeps autotuning: its round trips are the
// internet's, and a fixed buffer would cap its window.
const containerSockBuf = 256 << 10

// readName reads the connection's first bytes until they name a server, within
// FirstBytesTimeout; it returns the name and the bytes read.
func (g *Gate) readName(c net.Conn) (string, []byte, error) {
	c.SetReadDeadline(time.Now().Add(g.cfg.FirstBytesTimeout)) //nolint:errcheck
	defer c.SetReadDeadline(time.Time{})                       //nolint:errcheck
	buf := make([]byte, 0, 2048)
	for {
		if len(buf) == cap(buf) {
			if cap(buf) >= 2*maxSniff {
				return "", nil, errors.New("no server name in the first 32 KiB")
			}
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		name, _, serr := sniffName(buf)
		if serr == nil {
			return name, buf, nil
		}
		if !errors.Is(serr, errNeedMore) {
			return "", nil, serr
		}
		if err != nil {
			return "", nil, fmt.Errorf("before a server name was sent: %w", err)
		}
	}
}

// hasNamePort reports whether a name pattern of p allows port.
func (p Policy) hasNamePort(port uint16) bool {
	for _, x := range p.names {
		if x.port == port {
			return true
		}
	}
	return false
}

func reasonOf(dst string, err error) string {
	var de *DeniedError
	if errors.As(err, &de) {
		return de.Dest + ": " + de.Reason
	}
	return dst + ": " + err.Error()
}

// refuse resets c (RST, so the client fails at once rather than seeing an orderly close it may
// retry) and logs why.
func (g *Gate) refuse(c net.Conn, callID, name, reason string) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) //nolint:errcheck
	}
	g.denied.Add(1)
	g.log.Info("egress denied", "call_id", callID, "src", c.RemoteAddr().String(), "name", name, "reason", reason)
	c.Close()
}
