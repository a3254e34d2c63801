package microvm

import (
	"os"
	"time"

	"github.com/axocoatl/isolation/sandbox/microvm/internal/rootdrive"
)

// Bounds on the state kept per VM shape (vCPUs, memory): each shape has its own pool and
// snapshot, and tools choose their memory, so without bounds a catalog of many memory sizes would
// keep a pool and a ~70 MB snapshot per size for ever.
const (
	// DefaultPoolIdle: a shape unused for this long has its pool drained and its snapshot removed.
	DefaultPoolIdle = 5 * time.Minute
	// DefaultMaxShapes: using one more shape drops the least recently used one.
	DefaultMaxShapes = 4
	// DefaultPoolMaxTotal and DefaultPoolMaxMemoryMB bound the pooled VMs of all shapes: an idle
	// pooled VM costs ~140 MiB of host RSS for a 256 MB guest (QEMU under TCG) and a share of
	// the CPU when it boots, so a few are enough on a small host.
	DefaultPoolMaxTotal    = 4
	DefaultPoolMaxMemoryMB = 2048
)

// touch records a use of shape sh; a shape beyond MaxShapes evicts the least recently used one.
func (s *Sandbox) touch(sh shape) { s.touchDrive(sh, nil) }

// touchDrive is touch for a shape with an image drive, d: the shape holds it while in use.
func (s *Sandbox) touchDrive(sh shape, d *rootdrive.Drive) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	_, known := s.used[sh]
	s.used[sh] = time.Now()
	s.holdLocked(sh, d)
	var evict []shape
	for !known && len(s.used) > s.opts.MaxShapes {
		var lru shape
		var oldest time.Time
		for o, t := range s.used {
			if o != sh && (oldest.IsZero() || t.Before(oldest)) {
				lru, oldest = o, t
			}
		}
		delete(s.used, lru)
		evict = append(evict, lru)
	}
	s.mu.Unlock()
	for _, o := range evict {
		s.drop(o, "more shapes than max_shapes")
	}
}

// drop closes sh's pool (its ready VMs are destroyed, a boot under way is destroyed when it
// finishes) and removes its snapshot; a snapshot still being taken is left for a later drop.
func (s *Sandbox) drop(sh shape, why string) {
	s.mu.Lock()
	p := s.pools[sh]
	delete(s.pools, sh)
	e := s.snaps[sh]
	if e != nil && e.done.Load() {
		delete(s.snaps, sh)
	} else {
		e = nil
	}
	delete(s.used, sh)
	s.releaseUnheldLocked()
	s.mu.Unlock()
	if p == nil && e == nil {
		return
	}
	if p != nil {
		p.close(s)
	}
	if e != nil && e.err == nil && e.snap.Dir != "" {
		if err := os.RemoveAll(e.snap.Dir); err != nil {
			s.log.Warn("remove snapshot", "dir", e.snap.Dir, "err", err)
		}
	}
	s.log.Info("dropped a VM shape's pool and snapshot", "shape", sh.String(), "why", why)
}

// janitor drops the shapes unused for PoolIdle, until the sandbox closes.
func (s *Sandbox) janitor() {
	defer s.bg.Done()
	tick := min(s.opts.PoolIdle/4, 30*time.Second)
	t := time.NewTicker(max(tick, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case now := <-t.C:
			s.mu.Lock()
			var idle []shape
			seen := map[shape]bool{}
			for _, m := range []map[shape]bool{keys(s.pools), keys(s.snaps)} {
				for sh := range m {
					if !seen[sh] && now.Sub(s.used[sh]) > s.opts.PoolIdle {
						idle = append(idle, sh)
					}
					seen[sh] = true
				}
			}
			s.mu.Unlock()
			for _, sh := range idle {
				s.drop(sh, "idle")
			}
		}
	}
}

func keys[V any](m map[shape]V) map[shape]bool {
	out := make(map[shape]bool, len(m))
	for k := range m {
		out[k] = true
	}
	return out
}
