package wasm

import (
	"sync"
	"sync/atomic"

	"github.com/tetratelabs/wazero/experimental"
)

// callMemory is the memory allocator of one call: it enforces the call's memory limit and
// remembers whether the guest asked for more, so that a failed grow — whatever the guest made of
// it (a Go guest exits 2, others trap) — is reported as isolation.ErrMemoryLimit.
type callMemory struct {
	pool  *memPool
	limit uint64
	// snap, when set, is the content the memory starts with.
	snap *snapshot
	// denied is set by the guest's goroutine (in Reallocate) and read after the call returned.
	denied atomic.Bool
}

func (c *callMemory) Allocate(_, _ uint64) experimental.LinearMemory {
	m := &linearMemory{call: c, region: c.pool.get()}
	if c.snap != nil {
		if b := m.region.grow(c.snap.size); b != nil {
			c.snap.restore(b)
		}
	}
	return m
}

// linearMemory is one instance's memory, backed by a pooled region.
type linearMemory struct {
	call   *callMemory
	region region
}

func (m *linearMemory) Reallocate(size uint64) []byte {
	if size > m.call.limit {
		m.call.denied.Store(true)
		return nil
	}
	b := m.region.grow(size)
	if b == nil {
		m.call.denied.Store(true)
	}
	return b
}

// Free returns the region to the pool; wazero calls it once, when the instance is closed (and no
// longer runs).
func (m *linearMemory) Free() {
	if m.region != nil {
		m.call.pool.put(m.region)
		m.region = nil
	}
}

// region is the storage of one linear memory. Not safe for concurrent use: one instance owns it.
type region interface {
	// grow returns the memory resized to size bytes (contents kept), or nil when it cannot.
	grow(size uint64) []byte
	// reset zeroes what the last owner may have written.
	reset()
	// release frees the storage; the region is unusable afterwards.
	release()
}

// memPool keeps up to max released regions for reuse. Safe for concurrent use.
type memPool struct {
	max int
	// heap selects Go-heap regions (growing copies) instead of mmap-backed ones.
	heap bool
	// live counts regions handed out and not yet returned (tests check it drops to zero).
	live atomic.Int64

	mu   sync.Mutex // protects free and closed
	free []region
	// closed: put releases regions instead of keeping them.
	closed bool
}

func newMemPool(max int, heap bool) *memPool { return &memPool{max: max, heap: heap} }

func (p *memPool) get() region {
	p.live.Add(1)
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		r := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return r
	}
	p.mu.Unlock()
	if p.heap {
		return &heapRegion{}
	}
	return newRegion()
}

func (p *memPool) put(r region) {
	p.live.Add(-1)
	r.reset()
	p.mu.Lock()
	if !p.closed && len(p.free) < p.max {
		p.free = append(p.free, r)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	r.release()
}

// close releases the kept regions; regions still in use are released when they come back.
func (p *memPool) close() {
	p.mu.Lock()
	free := p.free
	p.free, p.closed = nil, true
	p.mu.Unlock()
	for _, r := range free {
		r.release()
	}
}

// heapRegion is a linear memory on the Go heap: growing copies, as wazero does by default.
type heapRegion struct {
	mem []byte
}

func (r *heapRegion) grow(size uint64) []byte {
	if size <= uint64(cap(r.mem)) {
		r.mem = r.mem[:size]
		return r.mem
	}
	b := make([]byte, size, size+size/2)
	copy(b, r.mem)
	r.mem = b[:size]
	return r.mem
}

func (r *heapRegion) reset()   { r.mem = nil }
func (r *heapRegion) release() { r.mem = nil }
