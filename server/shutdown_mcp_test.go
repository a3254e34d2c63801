package server

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/axocoatl/isolation/server/internal/testtools"
)

// TestShutdownAnswersMCPCalls: an MCP call that ends within the grace period gets its result; one
// still running when the grace period ends gets its isError canceled result, as HTTP calls get
// their 503. (The client used to read nothing: its event stream ended when shutdown began, and
// the request's context with the grace period.)
func TestShutdownAnswersMCPCalls(t *testing.T) {
	for _, c := range []struct {
		name    string
		grace   time.Duration
		release bool // the call ends on its own during the grace period
	}{
		{"finishes within the grace period", 20 * time.Second, true},
		{"cancelled at its end", 200 * time.Millisecond, false},
	} {
		t.Run(c.name, func(t *testing.T) { testShutdownMCP(t, c.grace, c.release) })
	}
}

func testShutdownMCP(t *testing.T, grace time.Duration, release bool) {
	f := testtools.New(t)
	s, err := New(Config{Executor: f.Exec, GracePeriod: grace})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()
	cctx, ccancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer ccancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(cctx,
		&mcp.StreamableClientTransport{Endpoint: "http://" + ln.Addr().String() + "/mcp", MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	type reply struct {
		res *mcp.CallToolResult
		err error
	}
	replies := make(chan reply, 1)
	go func() {
		res, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "block", Arguments: map[string]any{}})
		replies <- reply{res, err}
	}()
	<-f.Started
	start := time.Now()
	cancel()
	if release {
		time.Sleep(100 * time.Millisecond) // shutdown has begun
		f.Release <- struct{}{}
	}
	r := <-replies
	if r.err != nil {
		t.Fatalf("the MCP call in flight at shutdown got no result: %v", r.err)
	}
	sc, _ := json.Marshal(r.res.StructuredContent)
	if release && (r.res.IsError || !strings.Contains(string(sc), `"released":true`)) {
		t.Errorf("result %s, want the call's output", sc)
	}
	if !release && (!r.res.IsError || !strings.Contains(string(sc), `"kind":"canceled"`)) {
		t.Errorf("result %s, want isError canceled", sc)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve = %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %s", d)
	}
}
