//go:build !linux

package egress

import (
	"errors"
	"net"
	"net/netip"
)

// originalDst needs Linux's conntrack (connections arrive by nftables redirect).
func originalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.New("the egress proxy needs Linux (SO_ORIGINAL_DST)")
}
