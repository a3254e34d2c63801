package server

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/axocoatl/isolation/server/internal/testtools"
)

// serveReal serves cfg over a fresh fixture on a real listener (the connection deadlines live in
// the http.Server that Serve builds) and returns its address.
func serveReal(t *testing.T, cfg Config) (*Server, *testtools.Fixture, string) {
	t.Helper()
	f := testtools.New(t)
	cfg.Executor = f.Exec
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		close(f.Release)
		cancel()
		<-served
	})
	return s, f, ln.Addr().String()
}

// readAll reads what the server sends until it closes the connection, or fails the test after
// limit.
func readUntilClosed(t *testing.T, c net.Conn, limit time.Duration) (string, time.Duration) {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("the server kept the connection open for %s (read %q): %v", limit, b, err)
	}
	return string(b), time.Since(start)
}

func TestConnectionDeadlines(t *testing.T) {
	const d = 300 * time.Millisecond
	_, _, addr := serveReal(t, Config{BodyTimeout: d, ReadHeaderTimeout: d, IdleTimeout: d})
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	t.Run("stalled body", func(t *testing.T) {
		c := dial(t)
		io.WriteString(c, "POST /v1/tools/echo/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
		got, took := readUntilClosed(t, c, 5*time.Second)
		if !strings.HasPrefix(got, "HTTP/1.1 408 ") || !strings.Contains(got, `"kind":"request_timeout"`) {
			t.Errorf("stalled body answered %q", got)
		}
		if took < d/2 {
			t.Errorf("cut off after %s, before the %s deadline", took, d)
		}
	})
	t.Run("stalled headers", func(t *testing.T) {
		c := dial(t)
		io.WriteString(c, "POST /v1/tools/echo/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n")
		readUntilClosed(t, c, 5*time.Second)
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial(t)
		io.WriteString(c, "POST /v1/tools/echo/execute HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("call on the connection: %v %v", resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := br.ReadByte(); err != io.EOF {
			t.Errorf("idle connection not closed: %v", err)
		}
	})
	// The body deadline ends with the body: a call running past it is not cut short.
	t.Run("long call after the body", func(t *testing.T) {
		resp, err := http.Post("http://"+addr+"/v1/tools/slow/execute", "application/json", strings.NewReader(`{"ms":900}`))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != `{"slept_ms":900}` {
			t.Errorf("a call longer than the body deadline: %d %s", resp.StatusCode, b)
		}
	})
}

const mcpInitialize = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`

func postInitialize(t *testing.T, addr string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+addr+"/mcp", strings.NewReader(mcpInitialize))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestMCPSessionCap(t *testing.T) {
	s, f, addr := serveReal(t, Config{MaxMCPSessions: 2})
	sessions := func() int {
		n := 0
		for range s.mcp.MCP().Sessions() {
			n++
		}
		return n
	}
	// Clients that never delete their sessions: the cap holds, the idle longest make room.
	for i := range 6 {
		if resp := postInitialize(t, addr); resp.StatusCode != 200 || resp.Header.Get("Mcp-Session-Id") == "" {
			t.Fatalf("session %d: %d", i, resp.StatusCode)
		}
		if n := sessions(); n > 2 {
			t.Fatalf("%d sessions open after %d created, cap 2", n, i+1)
		}
	}
	// Two busy sessions: a third is refused, not made room for by closing a busy one.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 2)
	for range 2 {
		cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).
			Connect(ctx, &mcp.StreamableClientTransport{Endpoint: "http://" + addr + "/mcp", MaxRetries: -1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer cs.Close()
		go func() {
			_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "block", Arguments: map[string]any{}})
			errc <- err
		}()
		<-f.Started
	}
	resp := postInitialize(t, addr)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a session over the cap while all are busy: %d", resp.StatusCode)
	}
	f.Release <- struct{}{}
	f.Release <- struct{}{}
	for range 2 {
		if err := <-errc; err != nil {
			t.Errorf("a busy session's call failed: %v", err)
		}
	}
	if n := sessions(); n != 2 {
		t.Errorf("%d sessions open, want the 2 busy ones", n)
	}
}
