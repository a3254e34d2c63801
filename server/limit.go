package server

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/server/internal/metrics"
)

// limiter bounds concurrent calls: globally (a semaphore with an optional short queue) and per
// tool (a counter; over it is refused at once, so one slow tool cannot hold the queue).
type limiter struct {
	global    chan struct{} // nil: no global limit
	queueWait time.Duration
	perTool   int
	overrides map[string]int
	metrics   *metrics.Metrics

	mu    sync.Mutex     // protects inUse
	inUse map[string]int // tool → running calls; entries at 0 are deleted
}

func newLimiter(global int, queueWait time.Duration, perTool int, overrides map[string]int, m *metrics.Metrics) *limiter {
	l := &limiter{queueWait: queueWait, perTool: perTool, overrides: map[string]int{}, metrics: m, inUse: map[string]int{}}
	if global > 0 {
		l.global = make(chan struct{}, global)
	}
	for k, v := range overrides {
		l.overrides[k] = v
	}
	return l
}

// limitFor is the tool's concurrency limit (0: none).
func (l *limiter) limitFor(tool string) int {
	if n, ok := l.overrides[tool]; ok {
		return n
	}
	return l.perTool
}

// acquire takes a slot for a call of tool, or returns ("global_limit" | "tool_limit") when over.
func (l *limiter) acquire(ctx context.Context, tool string) (release func(), refused string) {
	toolHeld := false
	if lim := l.limitFor(tool); lim > 0 {
		l.mu.Lock()
		if l.inUse[tool] >= lim {
			l.mu.Unlock()
			l.metrics.Rejected("tool_limit")
			return nil, "tool_limit"
		}
		l.inUse[tool]++
		l.mu.Unlock()
		toolHeld = true
	}
	releaseTool := func() {
		if !toolHeld {
			return
		}
		l.mu.Lock()
		if l.inUse[tool]--; l.inUse[tool] <= 0 {
			delete(l.inUse, tool)
		}
		l.mu.Unlock()
	}
	if l.global != nil {
		select {
		case l.global <- struct{}{}:
		default:
			if !l.wait(ctx) {
				releaseTool()
				l.metrics.Rejected("global_limit")
				return nil, "global_limit"
			}
		}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if l.global != nil {
				<-l.global
			}
			releaseTool()
		})
	}, ""
}

func (l *limiter) wait(ctx context.Context) bool {
	if l.queueWait <= 0 {
		return false
	}
	t := time.NewTimer(l.queueWait)
	defer t.Stop()
	select {
	case l.global <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// errShuttingDown marks the busy error of a call refused because shutdown has begun.
var errShuttingDown = errors.New("the server is shutting down")

// admit takes a slot for a call of tool, or returns an error of class isolation.ErrBusy: over a
// concurrency limit, or shutdown has begun (wrapping errShuttingDown).
func (s *Server) admit(ctx context.Context, tool string) (release func(), err error) {
	if s.shutdown.Err() != nil {
		return nil, &isolation.Error{Kind: isolation.ErrBusy, Tool: tool, Err: errShuttingDown}
	}
	release, refused := s.limits.acquire(ctx, tool)
	switch refused {
	case "":
		return release, nil
	case "tool_limit":
		return nil, &isolation.Error{Kind: isolation.ErrBusy, Tool: tool, Message: "the tool is running its maximum number of concurrent calls"}
	}
	return nil, &isolation.Error{Kind: isolation.ErrBusy, Tool: tool, Message: "the server is running its maximum number of calls"}
}

// gate adapts admit for the MCP server.
func (s *Server) gate(ctx context.Context, tool string) (func(), error) {
	release, err := s.admit(ctx, tool)
	if err != nil {
		return nil, err
	}
	done := s.metrics.Start()
	return func() { done(); release() }, nil
}
