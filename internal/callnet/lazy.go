package callnet

import (
	"errors"
	"sync"
	"sync/atomic"
)

// ErrClosed is what Lazy.Get returns once Close was called.
var ErrClosed = errors.New("per-call networks closed")

// Lazy is a Pool made on first use and closed once: what a tier keeps for its calls with a
// network policy, so that a daemon whose tools never ask for a network makes no namespace,
// table or listener. The zero value is ready to use.
type Lazy struct {
	mu     sync.Mutex // serialises Get's make and Close; held across make, so the pool is made once
	closed bool       // guarded by mu
	// pool is the made pool (nil before and after Close). Written under mu, read without it:
	// Made and Available may be called from within make itself.
	pool atomic.Pointer[Pool]
}

// Get returns the pool, calling make for it on first use (a failed make is tried again by the
// next Get). After Close it returns ErrClosed.
func (l *Lazy) Get(make func() (*Pool, error)) (*Pool, error) {
	if p := l.pool.Load(); p != nil {
		return p, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if p := l.pool.Load(); p != nil {
		return p, nil
	}
	if l.closed {
		return nil, ErrClosed
	}
	p, err := make()
	if err != nil {
		return nil, err
	}
	l.pool.Store(p)
	return p, nil
}

// Made returns the pool if Get made one and Close has not run, else nil: for handing back
// namespaces, which only exist when it was made.
func (l *Lazy) Made() *Pool { return l.pool.Load() }

// Available is Available() until a pool was made, then "" without asking the kernel again: a
// made pool proves the host can (root, nftables), and tiers ask for every call of a tool with a
// network policy, where Available() costs a netlink dump of the nftables tables.
func (l *Lazy) Available() string {
	if l.Made() != nil {
		return ""
	}
	return Available()
}

// Close closes the pool if one was made (its table and the gate's listeners go) and makes later
// Gets fail. The caller has destroyed everything that used its namespaces first. Idempotent.
func (l *Lazy) Close() error {
	l.mu.Lock()
	p := l.pool.Swap(nil)
	l.closed = true
	l.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Close()
}
