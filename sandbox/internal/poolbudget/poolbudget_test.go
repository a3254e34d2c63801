package poolbudget

import (
	"sync"
	"sync/atomic"
	"testing"
)

// fakePool is a pool of idle items of mb megabytes each, as a tier's pool keeps them.
type fakePool struct {
	name   string
	mb     int
	bp     *Pool
	mu     sync.Mutex
	idle   int
	woken  atomic.Int32
	shrunk atomic.Int32
}

func join(b *Budget, name string, mb int) *fakePool {
	f := &fakePool{name: name, mb: mb}
	f.bp = b.Join(f.shrink, func() { f.woken.Add(1) })
	return f
}

func (f *fakePool) shrink() bool {
	f.mu.Lock()
	if f.idle == 0 {
		f.mu.Unlock()
		return false
	}
	f.idle--
	f.mu.Unlock()
	f.shrunk.Add(1)
	f.bp.Release(f.mb)
	return true
}

// fill acquires up to n items and reports how many it got.
func (f *fakePool) fill(n int) int {
	got := 0
	for range n {
		if !f.bp.Acquire(f.mb) {
			break
		}
		f.mu.Lock()
		f.idle++
		f.mu.Unlock()
		got++
	}
	return got
}

func (f *fakePool) items() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.idle
}

func TestFairShareAndLRU(t *testing.T) {
	b := New(4, 0)
	var ps []*fakePool
	for _, name := range []string{"t1", "t2", "t3", "t4", "t5"} {
		p := join(b, name, 64)
		p.bp.Touch()
		p.fill(2)
		ps = append(ps, p)
		if c, _ := b.Usage(); c > 4 {
			t.Fatalf("after %s: %d items reserved, budget 4", name, c)
		}
	}
	// t1 and t2 filled to 2; t3, t4, t5 each took one from the least recently used pool that
	// had one: t1, t1, then t2.
	want := map[string]int{"t1": 0, "t2": 1, "t3": 1, "t4": 1, "t5": 1}
	for _, p := range ps {
		if p.items() != want[p.name] {
			t.Errorf("%s holds %d items, want %d", p.name, p.items(), want[p.name])
		}
		if h, _ := p.bp.Held(); h != p.items() {
			t.Errorf("%s: budget says %d held, pool has %d", p.name, h, p.items())
		}
	}
	if got := ps[0].shrunk.Load(); got != 2 {
		t.Errorf("t1 (least recently used) gave up %d items, want 2", got)
	}
	// t1 is used again: it is below its fair share (1) and takes from the least recently used
	// pool with an item, t2.
	ps[0].bp.Touch()
	if ps[0].fill(2) != 1 {
		t.Fatalf("t1 got %d items, want 1 (its fair share)", ps[0].items())
	}
	if ps[1].items() != 0 {
		t.Errorf("t2 still holds %d items; it was the least recently used", ps[1].items())
	}
}

func TestAtFairShareIsRefusedAndWoken(t *testing.T) {
	b := New(2, 0)
	a, c := join(b, "a", 10), join(b, "c", 10)
	a.bp.Touch()
	if a.fill(1) != 1 || c.fill(2) != 1 {
		t.Fatal("each pool should get its fair share of 1")
	}
	// c is at its fair share: it may not take a's item even though it is more recent.
	if c.items() != 1 || a.items() != 1 {
		t.Fatalf("a %d, c %d; want 1 each", a.items(), c.items())
	}
	if c.woken.Load() != 0 {
		t.Fatal("woken before any room freed")
	}
	a.mu.Lock()
	a.idle--
	a.mu.Unlock()
	a.bp.Release(a.mb)
	if c.woken.Load() != 1 {
		t.Fatalf("c woken %d times after room freed, want 1", c.woken.Load())
	}
	if c.fill(1) != 1 {
		t.Fatal("c refused although the budget has room")
	}
	// a leaves: everything it held returns and the sole remaining pool's fair share is all.
	a.bp.Leave()
	if n, _ := b.Usage(); n != 2 {
		t.Fatalf("usage %d after a left holding nothing, want 2 (c's)", n)
	}
	if a.bp.Acquire(10) {
		t.Fatal("a pool that left was granted an item")
	}
}

func TestMemoryBound(t *testing.T) {
	b := New(0, 300)
	big, small := join(b, "big", 200), join(b, "small", 100)
	big.bp.Touch()
	if big.fill(3) != 1 {
		t.Fatalf("big got %d items of 200 MB in a 300 MB budget, want 1", big.items())
	}
	small.bp.Touch()
	if small.fill(3) != 1 {
		t.Fatalf("small got %d items, want 1 (100 MB left)", small.items())
	}
	if _, mb := b.Usage(); mb != 300 {
		t.Fatalf("usage %d MB, want 300", mb)
	}
	huge := join(b, "huge", 400)
	if huge.fill(1) != 0 {
		t.Fatal("an item larger than the whole budget was granted")
	}
	if big.items() != 1 || small.items() != 1 {
		t.Fatal("an item that can never fit made other pools shrink")
	}
}

func TestReleaseWithoutReservationIgnored(t *testing.T) {
	b := New(2, 100)
	p := join(b, "p", 50)
	p.bp.Release(50)
	if n, mb := b.Usage(); n != 0 || mb != 0 {
		t.Fatalf("usage %d/%d MB after a stray release, want 0/0", n, mb)
	}
}

// TestConcurrent checks the bounds under concurrent pools (run with -race).
func TestConcurrent(t *testing.T) {
	b := New(5, 0)
	var wg sync.WaitGroup
	var peak atomic.Int32
	for i := range 8 {
		p := join(b, string(rune('a'+i)), 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				p.bp.Touch()
				p.fill(2)
				if n, _ := b.Usage(); int32(n) > peak.Load() {
					peak.Store(int32(n))
				}
				p.shrink()
			}
			for p.shrink() {
			}
			p.bp.Leave()
		}()
	}
	wg.Wait()
	if peak.Load() > 5 {
		t.Fatalf("peak usage %d, budget 5", peak.Load())
	}
	if n, mb := b.Usage(); n != 0 || mb != 0 {
		t.Fatalf("usage %d/%d after every pool left, want 0/0", n, mb)
	}
}

// TestClaimedRoomNotStolen: the room a victim frees goes to the pool that made it shrink, not
// to a pool woken by the release.
func TestClaimedRoomNotStolen(t *testing.T) {
	b := New(3, 0)
	a := join(b, "a", 1)
	a.bp.Touch()
	a.fill(3)
	g := &fakePool{name: "g", mb: 1}
	g.bp = b.Join(g.shrink, func() { g.fill(1) }) // a filler refilling as soon as it is woken
	g.bp.Touch()
	if g.fill(2) != 1 {
		t.Fatalf("g got %d items, want its fair share 1", g.items())
	}
	r := join(b, "r", 1)
	r.bp.Touch()
	if r.fill(1) != 1 {
		t.Fatal("r, below its fair share, got nothing")
	}
	if a.items() != 1 || g.items() != 1 || r.items() != 1 {
		t.Fatalf("a %d, g %d, r %d: want 1 each", a.items(), g.items(), r.items())
	}
	// One item given up for g, one for r: a third means the room freed for r went to g.
	if n := a.shrunk.Load() + g.shrunk.Load(); n != 2 {
		t.Fatalf("%d items given up, want 2", n)
	}
}
