package callnet

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLazy(t *testing.T) {
	t.Run("made once by concurrent first calls", func(t *testing.T) {
		var l Lazy
		var made atomic.Int32
		want := &Pool{}
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := l.Get(func() (*Pool, error) { made.Add(1); return want, nil })
				if p != want || err != nil {
					t.Errorf("Get = %p, %v; want %p", p, err, want)
				}
			}()
		}
		wg.Wait()
		if made.Load() != 1 || l.Made() != want {
			t.Errorf("made %d times, Made() = %p", made.Load(), l.Made())
		}
	})
	t.Run("a failed make is tried again", func(t *testing.T) {
		var l Lazy
		boom := errors.New("boom")
		if _, err := l.Get(func() (*Pool, error) { return nil, boom }); !errors.Is(err, boom) {
			t.Fatalf("first Get: %v, want boom", err)
		}
		if l.Made() != nil {
			t.Fatal("a failed make left a pool")
		}
		p := &Pool{}
		if got, err := l.Get(func() (*Pool, error) { return p, nil }); got != p || err != nil {
			t.Fatalf("second Get = %p, %v", got, err)
		}
	})
	t.Run("closed before any use", func(t *testing.T) {
		var l Lazy
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		called := false
		if _, err := l.Get(func() (*Pool, error) { called = true; return &Pool{}, nil }); !errors.Is(err, ErrClosed) || called {
			t.Fatalf("Get after Close: %v (make called: %v), want ErrClosed without making", err, called)
		}
	})
}

// TestLazyAvailableFromMake: the tiers' make asks Available (through their own availability
// check) while Get holds the lock; it must not wait on it.
func TestLazyAvailableFromMake(t *testing.T) {
	var l Lazy
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = l.Get(func() (*Pool, error) { _ = l.Available(); _ = l.Made(); return nil, errors.New("no pool") })
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Get's make calling Available deadlocked")
	}
}
