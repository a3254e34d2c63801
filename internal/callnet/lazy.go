package callnet

import (
	"errors"
	"sync"
)

// ErrClosed is what Lazy.Get returns once Close was called.
var ErrClosed = errors.New("per-call networks closed")

// Lazy is a Pool made on first use and closed once: what a tier keeps for its calls with a
// network policy, so that a daemon whose tools never ask for a network makes no namespace,
// table or listener. The zero value is ready to use.
type Lazy struct {
	mu     sync.Mutex // guards pool and closed; held across make, so the pool is made once
	pool   *Pool
	closed bool
}

// Get returns the pool, calling make for it on first use (a failed make is tried again by the
// next Get). After Close it returns ErrClosed.
func (l *Lazy) Get(make func() (*Pool, error)) (*Pool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pool != nil {
		return l.pool, nil
	}
	if l.closed {
		return nil, ErrClosed
	}
	p, err := make()
	if err != nil {
		return nil, err
	}
	l.pool = p
	return p, nil
}

// Made returns the pool if Get made one and Close has not run, else nil: for handing back
// namespaces, which only exist when it was made.
func (l *Lazy) Made() *Pool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pool
}

// Close closes the pool if one was made (its table and the gate's listeners go) and makes later
// Gets fail. The caller has destroyed everything that used its namespaces first. Idempotent.
func (l *Lazy) Close() error {
	l.mu.Lock()
	p := l.pool
	l.pool, l.closed = nil, true
	l.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.Close()
}
