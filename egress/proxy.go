package egress

import (
	"context"
	"net"
)

// ServeTCP is a stub until the proxy lands.
func (g *Gate) ServeTCP(ctx context.Context, ln net.Listener) error {
	<-ctx.Done()
	return ln.Close()
}
