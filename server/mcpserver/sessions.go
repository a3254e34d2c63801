package mcpserver

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Session defaults of the streamable HTTP transport.
const (
	DefaultMaxSessions    = 256
	DefaultSessionTimeout = 30 * time.Minute
)

// sessionHeader carries the session id on every request after initialize.
const sessionHeader = "Mcp-Session-Id"

// HTTPOptions configure the streamable HTTP transport.
type HTTPOptions struct {
	// MaxBodyBytes bounds request bodies (0: the SDK's 4 MiB default).
	MaxBodyBytes int64
	// MaxSessions bounds open sessions (0: DefaultMaxSessions; <0: no bound). A new session beyond
	// it closes the session idle longest (one with no request in flight, event streams included);
	// when every session is busy the new one is refused: 429 busy with Retry-After.
	MaxSessions int
	// SessionTimeout closes sessions that receive no request for this long (0:
	// DefaultSessionTimeout).
	SessionTimeout time.Duration
}

// sessionCap holds the number of open sessions to a bound. Clients that never delete their
// sessions (most do not) would otherwise pile them up until the idle timeout.
type sessionCap struct {
	next http.Handler
	srv  *mcp.Server
	max  int
	log  *slog.Logger

	mu       sync.Mutex             // guards sessions and pending
	sessions map[string]*sessionUse // open sessions this handler created, by id
	pending  int                    // sessions being created (admitted, id not known yet)
}

// sessionUse is a session's activity; guarded by sessionCap.mu.
type sessionUse struct {
	last   time.Time // end of its latest request
	active int       // requests in flight (an open event stream counts)
}

func (c *sessionCap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if id := r.Header.Get(sessionHeader); id != "" {
		u := c.begin(id)
		defer c.end(u)
		c.next.ServeHTTP(w, r)
		return
	}
	if r.Method != http.MethodPost {
		c.next.ServeHTTP(w, r) // no session is created: the SDK answers
		return
	}
	victim, ok := c.reserve()
	if !ok {
		c.log.Warn("MCP session refused: every session is busy", slog.Int("max_sessions", c.max))
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
		json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
			"kind": "busy", "message": "the server holds its maximum number of MCP sessions, all busy", "retryable": true}})
		return
	}
	defer func() {
		c.mu.Lock()
		c.pending--
		if id := w.Header().Get(sessionHeader); id != "" {
			c.sessions[id] = &sessionUse{last: time.Now()}
		}
		c.mu.Unlock()
	}()
	if victim != nil {
		c.log.Info("MCP session closed to make room for a new one", slog.String("session_id", victim.ID()), slog.Int("max_sessions", c.max))
		victim.Close()
	}
	c.next.ServeHTTP(w, r)
}

// begin counts a request on a session this handler knows (nil for any other id: unknown ids
// never grow the map).
func (c *sessionCap) begin(id string) *sessionUse {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.sessions[id]
	if u != nil {
		u.active++
	}
	return u
}

func (c *sessionCap) end(u *sessionUse) {
	if u == nil {
		return
	}
	c.mu.Lock()
	u.active--
	u.last = time.Now()
	c.mu.Unlock()
}

// reserve admits a new session: false when the cap is reached and no session is idle; otherwise
// the session to close first, if one must go.
func (c *sessionCap) reserve() (victim *mcp.ServerSession, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Forget sessions that ended on their own (deleted, timed out, failed to initialize).
	live := map[string]*mcp.ServerSession{}
	for ss := range c.srv.Sessions() {
		live[ss.ID()] = ss
	}
	for id := range c.sessions {
		if live[id] == nil {
			delete(c.sessions, id)
		}
	}
	if len(c.sessions)+c.pending >= c.max {
		var oldest string
		for id, u := range c.sessions {
			if u.active == 0 && (oldest == "" || u.last.Before(c.sessions[oldest].last)) {
				oldest = id
			}
		}
		if oldest == "" {
			return nil, false
		}
		delete(c.sessions, oldest)
		victim = live[oldest]
	}
	c.pending++
	return victim, true
}
