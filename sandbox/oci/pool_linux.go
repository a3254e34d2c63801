package oci

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"time"

	"github.com/axocoatl/isolation/internal/ocispec"
	"github.com/axocoatl/isolation/sandbox"
)

// poolKey identifies the containers a call can use: same tool folder and the settings baked
// into a container at creation (the timeout is per call, applied at start).
func poolKey(c sandbox.Call) string {
	return fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%d\x00%t", c.Tool, c.Dir, c.Entrypoint, c.Runtime, c.Limits.MemoryMB, c.Limits.Network)
}

// pool keeps up to size pre-created single-use containers of one tool. A filler goroutine
// creates them; take hands one to a call; after PoolIdle without a take the pool is drained
// and refilled on the next take.
type pool struct {
	s    *Sandbox
	tmpl sandbox.Call // the call the pool was prepared with, without input
	size int

	mu      chan struct{} // a 1-slot semaphore guarding the fields below
	ready   []*ctr
	dead    []*ctr // used containers the filler destroys before it creates new ones
	closed  bool   // set by close: retire then destroys on the caller's goroutine
	lastUse time.Time
	lastErr error
	changed chan struct{} // closed and replaced whenever ready or lastErr changes

	wake chan struct{} // 1-buffered: a take asks the filler to refill
	done chan struct{} // closed by close
	exit chan struct{} // closed when the filler returned
}

func (p *pool) lock()   { p.mu <- struct{}{} }
func (p *pool) unlock() { <-p.mu }

func newPool(s *Sandbox, call sandbox.Call, size int) *pool {
	call.Input = nil
	p := &pool{s: s, tmpl: call, size: size, mu: make(chan struct{}, 1), lastUse: time.Now(),
		changed: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{}), exit: make(chan struct{})}
	go p.fill()
	return p
}

// notify must be called with the lock held.
func (p *pool) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// fill runs for the pool's lifetime and does all of its slow work (destroying used containers,
// creating new ones) so that none of it is on a call's path. A call only takes a ready container
// and, once it has its outcome, hands it back (retire) and wakes the filler: refilling does not
// start while the call runs, so the two do not compete for CPU.
func (p *pool) fill() {
	defer close(p.exit)
	backoff := 100 * time.Millisecond
	for {
		p.lock()
		dead := p.dead
		p.dead = nil
		p.unlock()
		for _, c := range dead {
			p.s.destroy(c)
		}
		p.lock()
		idle := time.Since(p.lastUse) >= p.s.cfg.PoolIdle
		var drained []*ctr
		if idle && len(p.ready) > 0 {
			drained, p.ready = p.ready, nil
			p.notify()
		}
		missing := 0
		if !idle {
			missing = p.size - len(p.ready)
		}
		wait := p.s.cfg.PoolIdle - time.Since(p.lastUse)
		p.unlock()
		for _, c := range drained {
			p.s.destroy(c)
		}
		if len(drained) > 0 {
			p.s.log.Info("warm pool drained after idle time", "tool", p.tmpl.Tool)
		}
		if missing > 0 {
			err := p.createSome(min(missing, createWorkers()))
			if err == nil {
				backoff = 100 * time.Millisecond
				select {
				case <-p.done:
					return
				default:
				}
				continue
			}
			p.s.log.Warn("warm pool: create container", "tool", p.tmpl.Tool, "error", err)
			wait = backoff
			backoff = min(backoff*2, 30*time.Second)
		}
		if wait <= 0 {
			wait = p.s.cfg.PoolIdle
		}
		t := time.NewTimer(wait)
		select {
		case <-p.done:
			t.Stop()
			return
		case <-p.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// createWorkers is how many containers a filler creates at once: creation is largely waiting on
// handshakes between this process and the container's init, so a second one in parallel raises
// the refill rate for a stream of calls.
func createWorkers() int { return min(max(runtime.GOMAXPROCS(0), 1), 4) }

// createSome creates n containers in parallel and adds those created to the pool. It returns the
// last creation error, nil when all succeeded.
func (p *pool) createSome(n int) error {
	errs := make(chan error, n)
	for range n {
		go func() {
			// Taken before creating: a change made meanwhile makes the container stale rather
			// than unnoticed.
			stamp := stampOf(p.tmpl)
			c, err := p.s.create(p.tmpl, nil)
			p.lock()
			if err == nil {
				c.stamp = stamp
				p.ready = append(p.ready, c)
			}
			p.lastErr = err
			p.notify()
			p.unlock()
			errs <- err
		}()
	}
	var last error
	for range n {
		if err := <-errs; err != nil {
			last = err
		}
	}
	return last
}

// take returns a ready container made from the tool as it is now (stamp), or nil. Ready
// containers made from an older version of the tool go to the filler to be destroyed and
// replaced. The filler replaces the one taken once the call retires it.
func (p *pool) take(stamp toolStamp) *ctr {
	p.lock()
	p.lastUse = time.Now()
	var c *ctr
	stale := false
	for len(p.ready) > 0 && c == nil {
		c, p.ready = p.ready[0], p.ready[1:]
		if c.stamp != stamp {
			p.dead, c, stale = append(p.dead, c), nil, true
		}
		p.notify()
	}
	p.unlock()
	if stale {
		p.s.log.Info("oci pool: the tool changed on disk; containers made from its old version are replaced", "tool", p.tmpl.Tool)
		p.kick()
	}
	return c
}

// retire hands a used container (or nil, for a call the pool could not serve) to the filler,
// which destroys it and refills the pool. After close it destroys c itself.
func (p *pool) retire(c *ctr) {
	p.lock()
	if p.closed {
		p.unlock()
		if c != nil {
			p.s.destroy(c)
		}
		return
	}
	if c != nil {
		p.dead = append(p.dead, c)
	}
	p.unlock()
	p.kick()
}

// kick wakes the filler without blocking.
func (p *pool) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// waitFull waits until the pool holds size containers, a creation fails, or ctx ends.
func (p *pool) waitFull(ctx context.Context) error {
	for {
		p.lock()
		n, err, ch := len(p.ready), p.lastErr, p.changed
		p.unlock()
		if n >= p.size {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-p.exit:
			return fmt.Errorf("oci: pool for %q is closed", p.tmpl.Tool)
		}
	}
}

// close stops the filler and destroys the ready and retired containers.
func (p *pool) close() {
	p.lock()
	p.closed = true
	p.unlock()
	close(p.done)
	<-p.exit
	p.lock()
	left := append(p.ready, p.dead...)
	p.ready, p.dead = nil, nil
	p.unlock()
	for _, c := range left {
		p.s.destroy(c)
	}
}

func (p *pool) stats() sandbox.PoolStats {
	p.lock()
	defer p.unlock()
	return sandbox.PoolStats{Tool: p.tmpl.Tool, Ready: len(p.ready), Size: p.size}
}

// Prepare starts (or reuses) the warm pool of call's tool and waits until it is full, a container
// cannot be created (that error is returned), or ctx ends. Idempotent. With a backend that cannot
// pre-create containers (crun, runc) or PoolSize < 0 it only checks that the call's spec builds.
func (s *Sandbox) Prepare(ctx context.Context, call sandbox.Call) error {
	if err := s.unavailable(); err != nil {
		return err
	}
	call.Limits = call.Limits.WithDefaults()
	var ids *ocispec.IDMap
	if !s.rootless {
		ids = &ocispec.IDMap{Size: idSlotSize} // checks the bundle's user against the range
	}
	if _, err := s.spec(call, "axocoatl-prepare", s.ioRoot, ids); err != nil {
		return err
	}
	if !s.be.canPool() || s.cfg.PoolSize < 0 {
		return nil
	}
	key := poolKey(call)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("oci: sandbox is closed")
	}
	p := s.pools[key]
	if p == nil {
		p = newPool(s, call, s.cfg.PoolSize)
		s.pools[key] = p
	}
	s.mu.Unlock()
	p.lock()
	p.lastUse = time.Now()
	p.unlock()
	p.kick()
	return p.waitFull(ctx)
}

// PoolStats reports every warm pool, sorted by tool.
func (s *Sandbox) PoolStats() []sandbox.PoolStats {
	s.mu.Lock()
	pools := make([]*pool, 0, len(s.pools))
	for _, p := range s.pools {
		pools = append(pools, p)
	}
	s.mu.Unlock()
	out := make([]sandbox.PoolStats, 0, len(pools))
	for _, p := range pools {
		out = append(out, p.stats())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tool < out[j].Tool })
	return out
}
