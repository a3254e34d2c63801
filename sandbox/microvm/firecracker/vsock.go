package firecracker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrVsockRefused is returned by DialVsock when Firecracker answered the CONNECT request with
// anything but "OK <n>" or closed the connection: usually nothing listens on that guest port yet.
var ErrVsockRefused = errors.New("firecracker vsock: connection refused by the guest side")

// maxHandshakeLine bounds the answer line; "OK 4294967295\n" is 14 bytes.
const maxHandshakeLine = 64

// DialVsock connects to guest port over Firecracker's host-side vsock socket: it connects to uds,
// writes "CONNECT <port>\n" and expects "OK <host port>\n". The handshake is bounded by ctx and,
// when ctx has no earlier deadline, by handshakeTimeout (0 means 2 s). The returned conn carries
// the guest's bytes from the first byte after the OK line.
//
// Every vsock connection is reset when the VM is snapshotted or restored: dial again afterwards.
func DialVsock(ctx context.Context, uds string, port uint32, handshakeTimeout time.Duration) (net.Conn, error) {
	if handshakeTimeout <= 0 {
		handshakeTimeout = 2 * time.Second
	}
	deadline := time.Now().Add(handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "unix", uds)
	if err != nil {
		return nil, fmt.Errorf("firecracker vsock: dial %s: %w", uds, err)
	}
	// Closing the conn when ctx ends unblocks the handshake reads below.
	stop := context.AfterFunc(dctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("firecracker vsock: CONNECT %d: %w", port, ctx.Err())
		}
		if dctx.Err() != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("firecracker vsock: CONNECT %d: no answer within %s: %w", port, handshakeTimeout, os.ErrDeadlineExceeded)
		}
		return nil, err
	}
	conn.SetDeadline(deadline)
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return fail(fmt.Errorf("firecracker vsock: write CONNECT %d: %w", port, err))
	}
	line, err := readLine(conn)
	if err != nil {
		return fail(fmt.Errorf("firecracker vsock: CONNECT %d: %w (%w)", port, ErrVsockRefused, err))
	}
	if !validOK(line) {
		return fail(fmt.Errorf("firecracker vsock: CONNECT %d: %w: answer %q", port, ErrVsockRefused, line))
	}
	if !stop() {
		// ctx ended while we were finishing: the deadline hook has already run.
		conn.Close()
		return fail(ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// readLine reads one '\n'-terminated line byte by byte, so nothing after the line is consumed
// (the guest's first bytes must stay in the conn for the caller).
func readLine(conn net.Conn) (string, error) {
	var b [1]byte
	var line []byte
	for len(line) < maxHandshakeLine {
		n, err := conn.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return string(line), nil
			}
			line = append(line, b[0])
			continue
		}
		if err != nil {
			return string(line), err
		}
	}
	return string(line), fmt.Errorf("answer longer than %d bytes", maxHandshakeLine)
}

func validOK(line string) bool {
	rest, ok := strings.CutPrefix(line, "OK ")
	if !ok {
		return false
	}
	_, err := strconv.ParseUint(rest, 10, 32)
	return err == nil
}

// GuestSocketPath is where Firecracker forwards guest-initiated connections to host port:
// uds + "_" + port.
func GuestSocketPath(uds string, port uint32) string {
	return uds + "_" + strconv.FormatUint(uint64(port), 10)
}

// ListenVsock listens for connections the guest opens to host port (CID 2) over the vsock whose
// host socket is uds. A stale socket file at the path is removed first. Closing the listener
// removes the socket file.
func ListenVsock(uds string, port uint32) (*net.UnixListener, error) {
	path := GuestSocketPath(uds, port)
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("firecracker vsock: %s exists and is not a socket", path)
		}
		os.Remove(path)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("firecracker vsock: listen %s: %w", path, err)
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// AcceptContext accepts one connection on l, giving up when ctx ends (l stays open).
func AcceptContext(ctx context.Context, l *net.UnixListener) (net.Conn, error) {
	stop := context.AfterFunc(ctx, func() { l.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if stop() {
			return
		}
		l.SetDeadline(time.Time{})
	}()
	c, err := l.Accept()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return c, nil
}
