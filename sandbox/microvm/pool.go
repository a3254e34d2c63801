package microvm

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/axocoatl/isolation/internal/guest"

	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/internal/poolbudget"
	"github.com/axocoatl/isolation/sandbox/microvm/internal/rootdrive"
)

// pool holds booted VMs of one shape waiting at READY. Each VM serves one call. Each ready VM
// (and each being booted for the pool) holds a reservation of its guest memory from the tier's
// pool budget (Config.PoolMaxTotal, PoolMaxMemoryMB) until it leaves the ready list.
type pool struct {
	bp *poolbudget.Pool // its budget membership; set at creation
	mb int              // the guest memory of its VMs: what each reserves

	mu       sync.Mutex // protects ready, filling, closed, failures, rewake
	ready    []*vm
	filling  int
	closed   bool
	failures int  // consecutive failed refills; sets the retry backoff
	rewake   bool // the budget said room freed: a refiller that was refused tries again
}

// newPool returns the pool of shape sh, member of the budget. Must be called with s.mu held.
func (s *Sandbox) newPool(sh shape) *pool {
	p := &pool{mb: sh.memMB}
	p.bp = s.budget.Join(func() bool { return s.giveUp(p, sh) }, func() {
		p.mu.Lock()
		p.rewake = true
		p.mu.Unlock()
		s.refillPool(p, sh) // cheap: at most starts a refill goroutine
	})
	return p
}

// giveUp destroys one ready VM of p so that a pool below its fair share of the budget can boot
// one (poolbudget's shrink).
func (s *Sandbox) giveUp(p *pool, sh shape) bool {
	p.mu.Lock()
	if p.closed || len(p.ready) == 0 {
		p.mu.Unlock()
		return false
	}
	v := p.ready[0]
	p.ready = p.ready[1:]
	p.mu.Unlock()
	s.destroy(v) // before the release: the budget bounds the VMs that exist
	p.bp.Release(p.mb)
	s.log.Info("pooled VM given up to a pool below its fair share of the budget", "shape", sh.String())
	return true
}

// Refill retry backoff: a failed boot is retried after refillBackoffMin, doubling per
// consecutive failure up to refillBackoffMax, so that a host that recovers (memory freed, image
// re-prepared) gets its pool back without a restart, and one that does not is not hammered.
const (
	refillBackoffMin = 500 * time.Millisecond
	refillBackoffMax = time.Minute
)

func refillBackoff(failures int) time.Duration {
	d := refillBackoffMin
	for i := 1; i < failures && d < refillBackoffMax; i++ {
		d *= 2
	}
	return min(d, refillBackoffMax)
}

// remove takes v out of the ready list and says whether it was there.
func (p *pool) remove(v *vm) bool {
	for i, r := range p.ready {
		if r == v {
			p.ready = append(p.ready[:i:i], p.ready[i+1:]...)
			return true
		}
	}
	return false
}

// watch waits for v's VMM to exit while v is in the pool: a VMM can die idle (killed by an
// operator, the OOM killer, a crash), and a dead VM must neither be handed out nor counted as
// ready. It returns once v left the pool (taken or destroyed) or the sandbox closes.
func (s *Sandbox) watch(p *pool, sh shape, v *vm) {
	defer s.bg.Done()
	select {
	case <-v.m.Done():
	case <-s.ctx.Done():
		return
	}
	p.mu.Lock()
	was := p.remove(v)
	p.mu.Unlock()
	if !was {
		return // taken (or closed) before it died: whoever holds it handles it
	}
	p.bp.Release(p.mb)
	s.deadPooled.Add(1)
	s.log.Warn("pooled VM died while idle; replacing it", "shape", sh.String(), "pid", v.m.PID())
	s.destroy(v)
	s.refill(sh)
}

// takePooled returns a ready VM of shape sh whose VMM is still alive, or nil.
func (s *Sandbox) takePooled(sh shape) *vm {
	if s.opts.PoolSize <= 0 {
		return nil
	}
	s.mu.Lock()
	p := s.pools[sh]
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	p.bp.Touch()
	for {
		p.mu.Lock()
		if len(p.ready) == 0 {
			p.mu.Unlock()
			return nil
		}
		v := p.ready[0]
		p.ready = p.ready[1:]
		p.mu.Unlock()
		p.bp.Release(p.mb)
		select {
		case <-v.m.Done():
			// Died while waiting, and its watcher has not removed it yet.
			s.deadPooled.Add(1)
			s.destroyAsync(v)
		default:
			return v
		}
	}
}

// refill starts background boots until the pool of sh holds PoolSize VMs (ready or booting).
// Boots run one at a time per pool: CPU is what a cold boot is short of.
func (s *Sandbox) refill(sh shape) {
	if s.opts.PoolSize <= 0 {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	p := s.pools[sh]
	if p == nil {
		p = s.newPool(sh)
		s.pools[sh] = p
	}
	s.mu.Unlock()
	s.fillPool(p, sh)
}

// refillPool is refill for the budget's wake-up: only while p is still sh's pool.
func (s *Sandbox) refillPool(p *pool, sh shape) {
	s.mu.Lock()
	current := !s.closed && s.pools[sh] == p
	s.mu.Unlock()
	if current {
		s.fillPool(p, sh)
	}
}

func (s *Sandbox) fillPool(p *pool, sh shape) {
	p.mu.Lock()
	if p.closed || p.filling > 0 || len(p.ready) >= s.opts.PoolSize {
		p.mu.Unlock()
		return
	}
	p.filling++
	p.mu.Unlock()
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		for {
			p.mu.Lock()
			if p.closed {
				p.filling--
				p.mu.Unlock()
				return
			}
			p.rewake = false
			p.mu.Unlock()
			if !p.bp.Acquire(p.mb) {
				// The budget is full and this pool at its fair share: stop until the budget
				// says room freed (rewake, set by its wake-up, which may come before filling
				// drops: then this goroutine tries again rather than nobody).
				p.mu.Lock()
				if p.rewake && !p.closed {
					p.mu.Unlock()
					continue
				}
				p.filling--
				p.mu.Unlock()
				return
			}
			v, err := s.start(s.ctx, sh, true)
			if err == nil {
				if err = s.warm(s.ctx, v, s.opts.WarmPool && sh.drive == "", sh.drive != "", netConfig(v)); err != nil {
					s.destroy(v)
				}
			}
			if err != nil {
				p.bp.Release(p.mb)
			}
			p.mu.Lock()
			if err != nil {
				p.failures++
				wait := refillBackoff(p.failures)
				closed := p.closed
				if closed || s.ctx.Err() != nil {
					p.filling--
				}
				p.mu.Unlock()
				if closed || s.ctx.Err() != nil {
					return
				}
				s.log.Warn("pool refill failed; retrying", "shape", sh.String(), "err", err, "retry_in", wait)
				select {
				case <-s.ctx.Done():
					p.mu.Lock()
					p.filling--
					p.mu.Unlock()
					return
				case <-time.After(wait):
				}
				continue
			}
			p.failures = 0
			if p.closed {
				p.filling--
				p.mu.Unlock()
				s.destroy(v)
				p.bp.Release(p.mb) // after close's Leave: a no-op, kept for clarity
				return
			}
			p.ready = append(p.ready, v)
			s.bg.Add(1)
			go s.watch(p, sh, v)
			full := len(p.ready) >= s.opts.PoolSize
			if full {
				p.filling--
			}
			p.mu.Unlock()
			if full {
				return
			}
		}
	}()
}

// warm has the agent of a pooled VM rehearse a call (guest.Hello.Rehearse: under TCG this
// halves a pooled call's overhead; ~0.1–0.2 s of background CPU), and start Python once when
// python is set (guest.Hello.Warm), and a call on its image drive when image is set
// (guest.Hello.RehearseImage), and configure its NIC when net is set (guest.Hello.Net: only for
// a VM that keeps its namespace until its call, never for one to snapshot), and waits for its
// READY.
func (s *Sandbox) warm(ctx context.Context, v *vm, python, image bool, net *guest.Net) error {
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { v.m.Kill() })
	defer stop()
	nonce := randHex(16)
	if err := guest.WriteFrame(v.conn, guest.TypeHello, guest.Hello{Nonce: nonce, Rehearse: true, Warm: python, RehearseImage: image, Net: net}); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var r guest.Ready
	if err := v.fr.Expect(guest.TypeReady, nonce, &r); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	return nil
}

// close marks the pool closed and destroys its ready VMs.
func (p *pool) close(s *Sandbox) {
	p.mu.Lock()
	p.closed = true
	ready := p.ready
	p.ready = nil
	p.mu.Unlock()
	for _, v := range ready {
		s.destroy(v)
	}
	p.bp.Leave()
}

// Prepare fills the pool for the call's VM shape (and takes its snapshot when enabled) ahead of
// the first call. It returns once the fill has started.
func (s *Sandbox) Prepare(ctx context.Context, call sandbox.Call) error {
	if _, _, a := s.backend(ctx); !a.Available {
		return nil
	}
	sh := s.shapeOf(call.Limits.WithDefaults())
	if sh.net {
		// Pooled VMs with a NIC hold a namespace each: refuse here, as Run would, rather than
		// have refills fail.
		if _, err := s.network(ctx); err != nil {
			return err
		}
	}
	rootfs, _, err := imageRoot(call)
	if err != nil {
		return err
	}
	var d *rootdrive.Drive
	if rootfs != "" {
		// A pool of VMs with this image's drive (built now if needed).
		if d, err = s.openDrive(ctx, call.Tool, rootfs); err != nil {
			return err
		}
		defer d.Close()
		sh.drive = d.Digest
	}
	s.touchDrive(sh, d)
	s.mu.Lock()
	p := s.pools[sh]
	s.mu.Unlock()
	if p != nil {
		p.bp.Touch() // before its refill asks the budget (a new pool is the most recent already)
	}
	s.refill(sh)
	return nil
}

// PoolStats reports one entry per VM shape; Tool names the shape (VMs are not tied to a tool:
// its files arrive with the call).
func (s *Sandbox) PoolStats() []sandbox.PoolStats {
	s.mu.Lock()
	out := make([]sandbox.PoolStats, 0, len(s.pools))
	pids := make([][]int, 0, len(s.pools))
	for sh, p := range s.pools {
		p.mu.Lock()
		ps := make([]int, 0, len(p.ready))
		for _, v := range p.ready {
			select {
			case <-v.m.Done(): // dead, its watcher is about to remove it: not ready
			default:
				ps = append(ps, v.m.PID())
			}
		}
		out = append(out, sandbox.PoolStats{Tool: sh.String(), Ready: len(ps), Size: s.opts.PoolSize})
		pids = append(pids, ps)
		p.mu.Unlock()
	}
	s.mu.Unlock()
	// The procfs reads happen outside the locks that calls take.
	for i, ps := range pids {
		var sum, n int64
		for _, pid := range ps {
			if r := processRSS(pid); r > 0 {
				sum, n = sum+r, n+1
			}
		}
		if n > 0 {
			out[i].IdleRSSBytes = sum / n
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Tool < out[j].Tool })
	return out
}

// processRSS is the resident set of process pid in bytes (0 when it cannot be read).
func processRSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0
	}
	return pages * int64(os.Getpagesize())
}
