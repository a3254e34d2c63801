package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vsockServer listens on a real unix socket and runs handle for every connection (after reading
// the request line, which it passes on).
func vsockServer(t *testing.T, handle func(c net.Conn, line string)) string {
	t.Helper()
	uds := filepath.Join(shortTempDir(t), "v.sock")
	l, err := net.Listen("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := readLine(c)
				if err != nil {
					return
				}
				handle(c, line)
			}()
		}
	}()
	return uds
}

func TestDialVsock(t *testing.T) {
	cases := []struct {
		name    string
		handle  func(c net.Conn, line string)
		timeout time.Duration
		wantErr error  // errors.Is target; nil means success
		wantMsg string // substring of the error
	}{
		{name: "ok, guest bytes in the same write stay for the caller", handle: func(c net.Conn, line string) {
			if line != "CONNECT 1024" {
				io.WriteString(c, "BAD\n")
				return
			}
			io.WriteString(c, "OK 1073741824\nREADY\n")
			io.Copy(io.Discard, c)
		}},
		{name: "refused by closing", handle: func(c net.Conn, line string) {}, wantErr: ErrVsockRefused},
		{name: "garbage answer", handle: func(c net.Conn, line string) { io.WriteString(c, "NOPE\n") }, wantErr: ErrVsockRefused, wantMsg: "NOPE"},
		{name: "OK without number", handle: func(c net.Conn, line string) { io.WriteString(c, "OK \n") }, wantErr: ErrVsockRefused},
		{name: "OK with junk", handle: func(c net.Conn, line string) { io.WriteString(c, "OK 12x\n") }, wantErr: ErrVsockRefused},
		{name: "endless line", handle: func(c net.Conn, line string) { io.WriteString(c, strings.Repeat("O", 200)); io.Copy(io.Discard, c) },
			wantErr: ErrVsockRefused, wantMsg: "longer than"},
		{name: "silent peer times out", handle: func(c net.Conn, line string) { io.Copy(io.Discard, c) },
			timeout: 50 * time.Millisecond, wantErr: os.ErrDeadlineExceeded},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			uds := vsockServer(t, tc.handle)
			conn, err := DialVsock(testCtx(t), uds, 1024, tc.timeout)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				line, err := readLine(conn)
				if err != nil || line != "READY" {
					t.Fatalf("first guest line %q, %v; want READY", line, err)
				}
				return
			}
			if conn != nil {
				conn.Close()
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.wantErr, tc.wantMsg)
			}
		})
	}

	t.Run("context canceled during handshake", func(t *testing.T) {
		uds := vsockServer(t, func(c net.Conn, line string) { io.Copy(io.Discard, c) })
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(20 * time.Millisecond); cancel() }()
		_, err := DialVsock(ctx, uds, 1024, 10*time.Second)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("no socket", func(t *testing.T) {
		_, err := DialVsock(testCtx(t), filepath.Join(shortTempDir(t), "none.sock"), 1024, 0)
		if err == nil || !strings.Contains(err.Error(), "dial") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestListenVsock(t *testing.T) {
	dir := shortTempDir(t)
	uds := filepath.Join(dir, "v.sock")
	if got, want := GuestSocketPath(uds, 52), uds+"_52"; got != want {
		t.Fatalf("GuestSocketPath = %q, want %q", got, want)
	}
	// A stale socket from a crashed run is replaced; a regular file is not touched.
	stale, err := net.Listen("unix", uds+"_52")
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	l, err := ListenVsock(uds, 52)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	go func() {
		c, err := net.Dial("unix", uds+"_52")
		if err == nil {
			io.WriteString(c, "hello")
			c.Close()
		}
	}()
	c, err := AcceptContext(testCtx(t), l)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	c.Close()
	if string(b) != "hello" {
		t.Fatalf("read %q", b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := AcceptContext(ctx, l); !errors.Is(err, context.Canceled) {
		t.Fatalf("AcceptContext after cancel: %v", err)
	}
	l.Close()
	if _, err := os.Lstat(uds + "_52"); !os.IsNotExist(err) {
		t.Fatalf("socket file left after Close: %v", err)
	}

	if err := os.WriteFile(uds+"_53", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenVsock(uds, 53); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("over a regular file: %v", err)
	}
}
