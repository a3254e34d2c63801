package oci

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/internal/poolbudget"
	"github.com/axocoatl/isolation/sandbox/oci/internal/ocispec"
)

// poolKey identifies the containers a call can use: same tool folder and the settings baked
// into a container at creation (the timeout is per call, applied at start).
func poolKey(c sandbox.Call) string {
	return fmt.Sprintf("%s\x00%s\x00%s\x00%d\x00%d\x00%s\x00%s", c.Tool, c.Dir, c.Entrypoint, c.Runtime, c.Limits.MemoryMB, c.Limits.Egress, c.Base)
}

// pool keeps up to size pre-created single-use containers of one tool, within the sandbox's
// pool budget (Config.PoolMaxTotal, PoolMaxMemoryMB: each ready container reserves one item of
// its memory limit from the time it is created until it leaves the ready list). A filler
// goroutine creates them; take hands one to a call. After PoolIdle without a take the pool is
// drained, leaves the budget and its filler exits: a dormant pool is a few words in s.pools (one
// per prepared tool), and the next take restarts the filler and refills it.
type pool struct {
	s    *Sandbox
	tmpl sandbox.Call // the call the pool was prepared with, without input
	size int
	mb   int // the memory limit of its containers: what each reserves from the budget

	mu       chan struct{} // a 1-slot semaphore guarding the fields below
	ready    []*ctr
	dead     []*ctr           // used containers the filler destroys before it creates new ones
	closed   bool             // set by close: retire then destroys on the caller's goroutine
	running  bool             // a filler goroutine runs (false: dormant or closed)
	bp       *poolbudget.Pool // its budget membership while running; nil when dormant
	limited  bool             // the budget refused a container since the last Prepare
	creating int              // containers being created by the filler
	lastUse  time.Time
	lastErr  error
	changed  chan struct{} // closed and replaced whenever ready, running, limited or lastErr changes

	wake    chan struct{}  // 1-buffered: a take asks the filler to refill
	done    chan struct{}  // closed by close
	fillers sync.WaitGroup // the filler goroutine; Add under mu while !closed
}

func (p *pool) lock()   { p.mu <- struct{}{} }
func (p *pool) unlock() { <-p.mu }

func newPool(s *Sandbox, call sandbox.Call, size int) *pool {
	call.Input = nil
	p := &pool{s: s, tmpl: call, size: size, mb: s.memoryMB(call), mu: make(chan struct{}, 1), lastUse: time.Now(),
		changed: make(chan struct{}), wake: make(chan struct{}, 1), done: make(chan struct{})}
	p.lock()
	p.start()
	p.unlock()
	return p
}

// start starts the filler of a dormant pool and has it join the budget. Must be called with the
// lock held.
func (p *pool) start() {
	if p.running || p.closed {
		return
	}
	p.running = true
	var bp *poolbudget.Pool
	bp = p.s.budget.Join(func() bool { return p.giveUp(bp) }, p.kick)
	p.bp = bp
	p.fillers.Add(1)
	go p.fill(bp)
	p.notify()
}

// giveUp destroys one ready container so that another pool, below its fair share of the budget,
// can have one (poolbudget's shrink). bp is the membership the filler that holds it runs with.
func (p *pool) giveUp(bp *poolbudget.Pool) bool {
	p.lock()
	if p.closed || p.bp != bp || len(p.ready) == 0 {
		p.unlock()
		return false
	}
	c := p.ready[0]
	p.ready = p.ready[1:]
	p.notify()
	p.unlock()
	p.s.destroy(c) // before the release: the budget bounds the containers that exist
	bp.Release(p.mb)
	p.s.log.Info("warm pool gave up a container to a pool below its fair share of the budget", "tool", p.tmpl.Tool)
	return true
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
func (p *pool) fill(bp *poolbudget.Pool) {
	defer p.fillers.Done()
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
		if idle && len(p.dead) == 0 && !p.closed {
			// Dormant: no containers, no goroutine, no share of the budget until the next take.
			p.running, p.bp = false, nil
			p.notify()
			p.unlock()
			bp.Leave() // returns the drained containers' reservations
			for _, c := range drained {
				p.s.destroy(c)
			}
			p.s.log.Info("warm pool drained after idle time", "tool", p.tmpl.Tool, "containers", len(drained))
			return
		}
		missing := 0
		if !idle {
			missing = p.size - len(p.ready)
		}
		wait := p.s.cfg.PoolIdle - time.Since(p.lastUse)
		p.unlock()
		for range drained {
			bp.Release(p.mb)
		}
		for _, c := range drained {
			p.s.destroy(c)
		}
		granted := 0
		for granted < min(missing, createWorkers()) && bp.Acquire(p.mb) {
			granted++
		}
		if granted > 0 || granted < min(missing, createWorkers()) {
			// In one step, so that waitFull never sees a refused pool with its granted
			// containers not yet counted as being created.
			p.lock()
			p.creating += granted
			p.limited = p.limited || granted < min(missing, createWorkers())
			p.notify()
			p.unlock()
		}
		if granted > 0 {
			err := p.createSome(bp, granted)
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

// createSome creates n containers in parallel, for each of which bp granted a reservation, and
// adds those created to the pool. It returns the last creation error, nil when all succeeded.
func (p *pool) createSome(bp *poolbudget.Pool, n int) error {
	errs := make(chan error, n)
	for range n {
		go func() {
			// Taken before creating: a change made meanwhile makes the container stale rather
			// than unnoticed.
			stamp := stampOf(p.tmpl)
			c, err := p.s.create(context.Background(), p.tmpl, nil)
			p.lock()
			if err == nil {
				c.stamp = stamp
				p.ready = append(p.ready, c)
			}
			p.creating--
			p.lastErr = err
			p.notify()
			p.unlock()
			if err != nil {
				bp.Release(p.mb)
			}
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
	p.start() // a dormant pool refills after this call
	bp := p.bp
	var c *ctr
	stale := false
	left := 0 // containers that left the ready list: their reservations return
	for len(p.ready) > 0 && c == nil {
		c, p.ready = p.ready[0], p.ready[1:]
		left++
		if c.stamp != stamp {
			p.dead, c, stale = append(p.dead, c), nil, true
		}
		p.notify()
	}
	p.unlock()
	if bp != nil {
		bp.Touch()
		for range left {
			bp.Release(p.mb)
		}
	}
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
	if !p.running {
		// Went dormant while the call ran (a PoolIdle shorter than the call): no filler.
		p.unlock()
		if c != nil {
			p.s.releaseAsync(c)
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

// waitFull waits until the pool holds size containers or as many as the budget grants it, a
// creation fails, or ctx ends.
func (p *pool) waitFull(ctx context.Context) error {
	for {
		p.lock()
		n, err, ch, running, closed := len(p.ready), p.lastErr, p.changed, p.running, p.closed
		limited := p.limited && p.creating == 0
		p.unlock()
		if closed {
			return fmt.Errorf("oci: pool for %q is closed", p.tmpl.Tool)
		}
		if n >= p.size || limited || !running {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-p.done:
		}
	}
}

// close stops the filler and destroys the ready and retired containers.
func (p *pool) close() {
	p.lock()
	p.closed = true
	p.notify()
	p.unlock()
	close(p.done)
	p.fillers.Wait()
	p.lock()
	left := append(p.ready, p.dead...)
	p.ready, p.dead = nil, nil
	bp := p.bp
	p.running, p.bp = false, nil
	p.unlock()
	if bp != nil {
		bp.Leave()
	}
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
	if _, err := s.spec(call, "axocoatl-prepare", s.ioRoot, ids, nil); err != nil {
		return err
	}
	if !call.Limits.Egress.IsZero() {
		if _, err := s.network(); err != nil {
			return err
		}
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
	p.limited = false
	p.start()
	bp := p.bp
	p.unlock()
	if bp != nil {
		bp.Touch()
	}
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
	// One entry per tool: a tool prepared with different settings (memory limit, entrypoint)
	// has several pools, summed here so that consumers keyed by tool (metrics) lose none.
	byTool := map[string]int{}
	out := make([]sandbox.PoolStats, 0, len(pools))
	for _, p := range pools {
		st := p.stats()
		if i, ok := byTool[st.Tool]; ok {
			out[i].Ready += st.Ready
			out[i].Size += st.Size
			continue
		}
		byTool[st.Tool] = len(out)
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tool < out[j].Tool })
	return out
}
