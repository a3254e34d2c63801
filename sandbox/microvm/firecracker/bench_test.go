package firecracker

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/axocoatl/isolation/sandbox/microvm/firecracker/internal/fcapi"
)

// BenchmarkClientPut measures one configuration request over the unix socket against the
// spec-checking fake (an upper bound for the client's own cost; the fake validates each body).
func BenchmarkClientPut(b *testing.B) {
	spec, err := loadSpec(specPath)
	if err != nil {
		b.Fatal(err)
	}
	sock := startFakeB(b, newFakeFirecracker(spec, "bench"))
	c := fcapi.NewClient(sock)
	defer c.CloseIdleConnections()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 128}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDialVsock measures connect + CONNECT/OK handshake on a real unix socket.
func BenchmarkDialVsock(b *testing.B) {
	uds := b.TempDir() + "/v.sock"
	l, err := net.Listen("unix", uds)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := readLine(c); err == nil {
					io.WriteString(c, "OK 1\n")
					io.Copy(io.Discard, c)
				}
			}()
		}
	}()
	ctx := context.Background()
	for b.Loop() {
		c, err := DialVsock(ctx, uds, 1024, 0)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
