// Package poolbudget bounds the warm items (pre-created containers, pre-booted VMs) that all the
// warm pools of one tier hold together, by count and by memory (the sum of the items' memory
// limits), and shares that budget fairly between the pools.
//
// A pool joins the budget, asks it (Acquire) before creating an item and gives the reservation
// back (Release) when the item leaves the pool: taken by a call, drained, or destroyed. When the
// budget is full, a pool holding less than its fair share (the budget divided by the pools that
// joined, at least one item each) makes the least recently used pool (by Touch: its last call or
// Prepare) give up one idle item; a pool at or above its fair share is refused and waits until
// room frees (its wake function is called). Warm pools are an optimisation: a refused pool's
// calls run cold, they do not fail.
package poolbudget

import (
	"sync"
)

// Budget is shared by the pools of one tier. Safe for concurrent use.
type Budget struct {
	maxCount int // 0: no count limit
	maxMB    int // 0: no memory limit

	mu    sync.Mutex // guards the fields below and every Pool's budget fields
	count int
	mb    int
	// claimed is the room (items, megabytes) pools are freeing by making others shrink: kept for
	// them, so that a pool woken by the release cannot take it first.
	claimedCount int
	claimedMB    int
	clock        uint64 // logical time of the last Touch: deterministic LRU order
	members      map[*Pool]struct{}
}

// New returns a budget of at most maxCount items and maxMB megabytes of items' memory limits;
// a value ≤ 0 leaves that dimension unlimited.
func New(maxCount, maxMB int) *Budget {
	return &Budget{maxCount: max(maxCount, 0), maxMB: max(maxMB, 0), members: map[*Pool]struct{}{}}
}

// Usage reports the items and megabytes reserved now.
func (b *Budget) Usage() (count, mb int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.count, b.mb
}

// Limits reports the budget's bounds (0: unlimited).
func (b *Budget) Limits() (maxCount, maxMB int) { return b.maxCount, b.maxMB }

// Pool is one warm pool's membership in a Budget.
type Pool struct {
	b *Budget
	// shrink makes the pool give up one idle item: it removes the item, destroys it and calls
	// Release before returning true; false when it has no idle item. Called without any budget
	// lock held, on the goroutine of the pool that needs the room.
	shrink func() bool
	// wake tells the pool that room may have freed (non-blocking).
	wake func()

	// Guarded by b.mu.
	held    int
	heldMB  int
	last    uint64
	wanting bool // refused since its last grant: woken when room frees
	claimMB int  // > -1 while it makes another pool shrink: the room it claimed (see claimed)
	left    bool
}

// Join adds a pool to the budget. shrink and wake may be nil (the pool then never gives items
// up to others / is never woken).
func (b *Budget) Join(shrink func() bool, wake func()) *Pool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.clock++
	p := &Pool{b: b, shrink: shrink, wake: wake, last: b.clock, claimMB: -1}
	b.members[p] = struct{}{}
	return p
}

// Touch records a use of the pool (a call or a Prepare): the least recently touched pool gives
// up items first.
func (p *Pool) Touch() {
	p.b.mu.Lock()
	p.b.clock++
	p.last = p.b.clock
	p.b.mu.Unlock()
}

// Held reports the items and megabytes the pool holds.
func (p *Pool) Held() (count, mb int) {
	p.b.mu.Lock()
	defer p.b.mu.Unlock()
	return p.held, p.heldMB
}

// fits says whether one more item of mb fits for p, besides the room others claimed. b.mu held.
func (b *Budget) fits(p *Pool, mb int) bool {
	cc, cmb := b.claimedCount, b.claimedMB
	if p.claimMB >= 0 {
		cc, cmb = cc-1, cmb-p.claimMB
	}
	return (b.maxCount == 0 || b.count+cc+1 <= b.maxCount) && (b.maxMB == 0 || b.mb+cmb+mb <= b.maxMB)
}

// setClaim records (mb ≥ 0) or drops (mb < 0) p's claim. b.mu held.
func (b *Budget) setClaim(p *Pool, mb int) {
	if p.claimMB >= 0 {
		b.claimedCount--
		b.claimedMB -= p.claimMB
	}
	p.claimMB = mb
	if mb >= 0 {
		b.claimedCount++
		b.claimedMB += mb
	}
}

// fair is the fair share of each pool, in items and megabytes. Must be called with b.mu held.
func (b *Budget) fair() (count, mb int) {
	n := max(len(b.members), 1)
	return max(b.maxCount/n, 1), b.maxMB / n
}

// below says whether p holding one more item of mb stays within its fair share. b.mu held.
func (b *Budget) below(p *Pool, mb int) bool {
	fc, fmb := b.fair()
	return (b.maxCount == 0 || p.held < fc) && (b.maxMB == 0 || p.heldMB+mb <= max(fmb, mb))
}

// over says whether q holds more than its fair share. b.mu held.
func (b *Budget) over(q *Pool) bool {
	fc, fmb := b.fair()
	return (b.maxCount > 0 && q.held > fc) || (b.maxMB > 0 && q.heldMB > fmb)
}

// Acquire reserves one item of mb megabytes for p and says whether it may create it. When the
// budget is full and p is below its fair share, less recently used pools (or pools above their
// fair share) are asked, least recently used first, to give up an idle item; this runs their
// shrink on the caller's goroutine. A refused pool is woken when room frees.
func (p *Pool) Acquire(mb int) bool {
	b := p.b
	mb = max(mb, 0)
	tried := map[*Pool]bool{}
	for {
		b.mu.Lock()
		if p.left || (b.maxMB > 0 && mb > b.maxMB) {
			b.setClaim(p, -1)
			b.mu.Unlock()
			return false
		}
		if b.fits(p, mb) {
			b.setClaim(p, -1)
			b.count++
			b.mb += mb
			p.held++
			p.heldMB += mb
			p.wanting = false
			b.mu.Unlock()
			return true
		}
		var victim *Pool
		if b.below(p, mb) {
			for q := range b.members {
				if q == p || tried[q] || q.held == 0 || q.shrink == nil || (q.last > p.last && !b.over(q)) {
					continue
				}
				if victim == nil || q.last < victim.last {
					victim = q
				}
			}
		}
		if victim == nil {
			b.setClaim(p, -1)
			p.wanting = true
			b.mu.Unlock()
			return false
		}
		tried[victim] = true
		b.setClaim(p, mb) // what victim frees is kept for p
		b.mu.Unlock()
		victim.shrink() // on success it called Release: the loop finds the room
	}
}

// Release returns the reservation of one item of mb megabytes (the value given to Acquire).
func (p *Pool) Release(mb int) {
	b := p.b
	mb = max(mb, 0)
	b.mu.Lock()
	if p.held == 0 {
		b.mu.Unlock()
		return // a release without a reservation: ignored rather than corrupting the totals
	}
	p.held--
	p.heldMB -= mb
	b.count--
	b.mb -= mb
	wake := b.wanting(p)
	b.mu.Unlock()
	for _, f := range wake {
		f()
	}
}

// wanting returns the wake functions of the pools refused since their last grant, other than
// except, and clears their flags. b.mu held.
func (b *Budget) wanting(except *Pool) []func() {
	var out []func()
	for q := range b.members {
		if q != except && q.wanting && q.wake != nil {
			q.wanting = false
			out = append(out, q.wake)
		}
	}
	return out
}

// Leave removes p from the budget, returning whatever it still holds; its fair share goes to
// the others. Later Acquires by p are refused. Idempotent.
func (p *Pool) Leave() {
	b := p.b
	b.mu.Lock()
	if p.left {
		b.mu.Unlock()
		return
	}
	p.left = true
	b.setClaim(p, -1)
	b.count -= p.held
	b.mb -= p.heldMB
	p.held, p.heldMB = 0, 0
	delete(b.members, p)
	wake := b.wanting(p)
	b.mu.Unlock()
	for _, f := range wake {
		f()
	}
}
