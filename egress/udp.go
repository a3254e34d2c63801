package egress

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// UDP grants. UDP reaches only what a CIDR pattern with proto udp (or any) allows: the rules of
// package callnet redirect a call's datagrams to such a pattern's range and port (and nothing
// else: other UDP is rejected there) to ServeUDP, which relays each flow from a socket of its
// own after checking the policy and the deny set again. Names are never reached over UDP.

// Bounds of the UDP relay.
const (
	// MaxUDPFlows bounds the relayed flows (a source address and port to a destination) open at
	// once; a datagram of a new flow beyond it is dropped.
	MaxUDPFlows = 1024
	// udpIdle ends a flow that carried nothing for this long.
	udpIdle = 30 * time.Second
	// maxDatagram is the largest datagram relayed.
	maxDatagram = 65535
)

type udpFlowKey struct{ src, dst netip.AddrPort }

type udpFlow struct {
	conn *net.UDPConn
	b    *binding
	last time.Time // guarded by the relay's mu
}

// ServeUDP relays the calls' UDP datagrams that the rules redirected to pc until ctx ends.
// origDst returns a datagram's original destination (the redirect rewrote it; package callnet
// asks the kernel's connection tracking). A datagram is relayed only if its source address is
// bound, a CIDR pattern of the binding's policy allows its destination over UDP and the
// destination is outside the deny set; replies go back from pc, which the kernel rewrites to
// come from the original destination. Everything else is dropped, logged and counted.
func (g *Gate) ServeUDP(ctx context.Context, pc net.PacketConn, origDst func(src netip.AddrPort) (netip.AddrPort, error)) error {
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	var (
		mu    sync.Mutex
		flows = map[udpFlowKey]*udpFlow{}
		wg    sync.WaitGroup
	)
	defer func() {
		mu.Lock()
		for _, f := range flows {
			f.conn.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		ua, ok := from.(*net.UDPAddr)
		if !ok {
			continue
		}
		src := ua.AddrPort()
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		b := g.binding(src.Addr())
		if b == nil {
			g.logDenied("", "", src.String(), &DeniedError{Dest: "udp", Reason: "source not bound to a call"})
			continue
		}
		dst, err := origDst(src)
		if err != nil {
			g.logDenied(b.callID, "", "udp", &DeniedError{Dest: "udp", Reason: "original destination unknown: " + err.Error()})
			continue
		}
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		key := udpFlowKey{src, dst}
		mu.Lock()
		f := flows[key]
		if f != nil && f.b != b {
			// The address serves another call now: the old flow is not its.
			f.conn.Close()
			delete(flows, key)
			f = nil
		}
		if f == nil {
			if !b.policy.AllowsAddr(dst, ProtoUDP) {
				mu.Unlock()
				g.logDenied(b.callID, "", dst.String(), &DeniedError{Dest: dst.String(), Reason: "no CIDR pattern allows this address and port over UDP"})
				continue
			}
			if g.deny.denied(dst.Addr()) {
				mu.Unlock()
				g.logDenied(b.callID, "", dst.String(), &DeniedError{Dest: dst.String(), Reason: "address in the deny set"})
				continue
			}
			if len(flows) >= MaxUDPFlows {
				mu.Unlock()
				g.logDenied(b.callID, "", dst.String(), &DeniedError{Dest: dst.String(), Reason: "too many UDP flows open (MaxUDPFlows)"})
				continue
			}
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
			if err != nil {
				mu.Unlock()
				g.logDenied(b.callID, "", dst.String(), err)
				continue
			}
			f = &udpFlow{conn: c, b: b}
			flows[key] = f
			g.allowed.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.udpReplies(f, pc, src, &mu)
				mu.Lock()
				if flows[key] == f {
					delete(flows, key)
				}
				mu.Unlock()
				f.conn.Close()
			}()
		}
		f.last = time.Now()
		mu.Unlock()
		_, _ = f.conn.Write(buf[:n])
	}
}

// udpReplies sends f's replies back to src through pc until the flow is idle for udpIdle or its
// binding is released.
func (g *Gate) udpReplies(f *udpFlow, pc net.PacketConn, src netip.AddrPort, mu *sync.Mutex) {
	stop := context.AfterFunc(f.b.ctx, func() { f.conn.Close() })
	defer stop()
	buf := make([]byte, maxDatagram)
	to := net.UDPAddrFromAddrPort(src)
	for {
		mu.Lock()
		deadline := f.last.Add(udpIdle)
		mu.Unlock()
		_ = f.conn.SetReadDeadline(deadline)
		n, err := f.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				mu.Lock()
				idle := time.Since(f.last) >= udpIdle
				mu.Unlock()
				if !idle {
					continue
				}
			}
			return
		}
		mu.Lock()
		f.last = time.Now()
		mu.Unlock()
		_, _ = pc.WriteTo(buf[:n], to)
	}
}
