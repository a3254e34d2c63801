package oci

/*
extern int axo_spawn_userns(unsigned int uid, unsigned int gid, int readyfd);
extern int axo_prlimit_as(unsigned int uid, unsigned int gid, int pid, int resource,
		   unsigned long long cur, unsigned long long max);
*/
import "C"

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/subid"
)

// The uid model (root only; rootless keeps its single-id namespace):
//
// Every container runs in a user namespace of its own slot: idSlotSize consecutive host uids and
// gids taken from the ranges /etc/subuid and /etc/subgid give the dedicated user (IDUser), mapped
// to container ids 0–65535. In-container root is therefore an unprivileged host uid that no other
// live container has, the call's I/O dir belongs to that uid alone, and /proc files that need
// host root (kpageflags, slabinfo...) are closed to it.
//
// A slot's user namespace is created by a helper that first becomes the slot's uid (see
// userns_linux.c), so the kernel records the slot uid as its owner: the per-user counts the kernel
// keeps for everything inside (inotify instances, RLIMIT_NPROC, nested user namespaces) are charged
// to that uid at the host level, not to root, so one call exhausting them does not starve another
// call or the host. The namespace is kept (an fd) while this process holds the slot, and each
// container joins it; its other namespaces are fresh per container.
//
// Slots are exclusive host-wide: a slot is taken with an open-file-description lock on one byte
// of idLockFile (offset = the slot's first uid / idSlotSize), so every process using the same
// ranges agrees, and the kernel drops a crashed owner's locks, making its slots reclaimable. A
// slot newly taken from the host is first checked for live processes with its ids (a crashed
// owner's containers not reaped yet) and skipped while it has any. One live container holds a
// slot; destroying the container frees it. Up to idleSlotsKept freed slots stay locked by this
// process with their namespaces, so a steady stream of calls does not re-create namespaces.
const (
	idSlotSize = 65536
	// idBaseMin is the lowest host id a range registered by this package starts at: above
	// shadow-utils' SUB_UID_MAX default (600,100,000), where `useradd` allocates users' ranges.
	idBaseMin     = 1 << 30
	idLockFile    = "/run/axocoatl/userns-slots.lock"
	subidLockFile = "/run/axocoatl/subid.lock"
	idleSlotsKept = 16
	// orphanRetry is how long a slot found with live processes is left alone.
	orphanRetry = 10 * time.Second
)

// idSlots hands out id slots to containers. Safe for concurrent use.
type idSlots struct {
	log        *slog.Logger
	uids, gids []uint32 // host start of each slot's uids and gids
	lock       *os.File // idLockFile, one open file description for all of this sandbox's slots

	mu     sync.Mutex
	slots  []slotState // guarded by mu
	idle   []int       // guarded by mu: held and unused, most recently freed last
	closed bool        // guarded by mu

	spawnMu sync.Mutex // one namespace helper at a time (a forked child holds this process's fds)
}

type slotState struct {
	held    bool      // the host-wide lock is ours
	inUse   bool      // a container (or an acquire in progress) owns it
	bad     bool      // a container in it could not be destroyed: never handed out again
	ns      *os.File  // the slot's user namespace; nil until made. Owned by the inUse holder.
	retryAt time.Time // not before then: it had live processes
}

// idSlot is one acquired slot.
type idSlot struct {
	s        *idSlots
	i        int
	uid, gid uint32 // host ids of container id 0
	ns       *os.File
}

// newIDSlots finds (registering them when absent) user's id ranges and prepares up to n slots.
func newIDSlots(user string, n, offset int, log *slog.Logger) (*idSlots, error) {
	uids, gids, added, err := subid.Ensure(subid.EnsureConfig{User: user, Count: uint32(n) * idSlotSize,
		Min: idBaseMin, Align: idSlotSize, LockFile: subidLockFile, CreateUser: true})
	if err != nil {
		return nil, err
	}
	if added {
		log.Info("registered subordinate ids for the Oci tier's user namespaces", "user", user, "uids", uids, "gids", gids)
	}
	us, gs := subid.Slots(uids, idSlotSize, offset+n), subid.Slots(gids, idSlotSize, offset+n)
	k := max(min(len(us), len(gs))-offset, 0)
	if k == 0 {
		return nil, fmt.Errorf("the ranges of %s in %s and %s hold no whole %d-id slot", user, subid.UIDFile, subid.GIDFile, idSlotSize)
	}
	us, gs = us[offset:offset+k], gs[offset:offset+k]
	if err := os.MkdirAll("/run/axocoatl", 0o711); err != nil {
		return nil, err
	}
	lf, err := os.OpenFile(idLockFile, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	return &idSlots{log: log, uids: us, gids: gs, lock: lf, slots: make([]slotState, k)}, nil
}

// errNoSlot is the error of a container that finds every slot in use.
func (s *idSlots) errNoSlot() error {
	return &isolation.Error{Kind: isolation.ErrBusy,
		Message: fmt.Sprintf("all %d user-namespace id slots are in use (raise the Oci id_slots and the ranges in %s/%s)", len(s.slots), subid.UIDFile, subid.GIDFile)}
}

// acquire takes a free slot with its user namespace.
func (s *idSlots) acquire() (*idSlot, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, errors.New("oci: id slots closed")
		}
		if k := len(s.idle); k > 0 {
			i := s.idle[k-1]
			s.idle = s.idle[:k-1]
			s.slots[i].inUse = true
			sl := s.slot(i)
			s.mu.Unlock()
			return sl, nil
		}
		i := -1
		now := time.Now()
		for j := range s.slots {
			st := &s.slots[j]
			if st.held || st.bad || now.Before(st.retryAt) || !s.tryLock(j) {
				continue
			}
			st.held, st.inUse = true, true
			i = j
			break
		}
		s.mu.Unlock()
		if i < 0 {
			return nil, s.errNoSlot()
		}
		// New to this process: a crashed owner's containers may still run with its ids.
		if pid := s.liveProcess(i); pid != 0 {
			s.log.Warn("id slot has live processes (a crashed owner's containers?); skipping it", "uid", s.uids[i], "pid", pid)
			s.mu.Lock()
			s.slots[i].retryAt = time.Now().Add(orphanRetry)
			s.giveBack(i)
			s.mu.Unlock()
			continue
		}
		ns, err := s.spawn(s.uids[i], s.gids[i])
		s.mu.Lock()
		if err != nil {
			s.giveBack(i)
			s.mu.Unlock()
			return nil, fmt.Errorf("oci: user namespace for uid %d: %w", s.uids[i], err)
		}
		s.slots[i].ns = ns
		sl := s.slot(i)
		s.mu.Unlock()
		return sl, nil
	}
}

// slot must be called with mu held.
func (s *idSlots) slot(i int) *idSlot {
	return &idSlot{s: s, i: i, uid: s.uids[i], gid: s.gids[i], ns: s.slots[i].ns}
}

// tryLock takes slot i's host-wide lock without waiting. mu held.
func (s *idSlots) tryLock(i int) bool {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: int64(s.uids[i] / idSlotSize), Len: 1}
	return unix.FcntlFlock(s.lock.Fd(), unix.F_OFD_SETLK, &lk) == nil
}

// giveBack releases slot i host-wide and drops its namespace. mu held.
func (s *idSlots) giveBack(i int) {
	st := &s.slots[i]
	lk := unix.Flock_t{Type: unix.F_UNLCK, Whence: 0, Start: int64(s.uids[i] / idSlotSize), Len: 1}
	_ = unix.FcntlFlock(s.lock.Fd(), unix.F_OFD_SETLK, &lk)
	if st.ns != nil {
		st.ns.Close()
		st.ns = nil
	}
	st.held, st.inUse = false, false
}

// release frees the slot of a container that was destroyed.
func (sl *idSlot) release() {
	s := sl.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slots[sl.i].inUse = false
	if !s.closed && len(s.idle) < idleSlotsKept {
		s.idle = append(s.idle, sl.i)
		return
	}
	s.giveBack(sl.i)
}

// quarantine keeps the slot of a container that could not be destroyed out of use for this
// process's lifetime: a surviving process would share the next container's ids.
func (sl *idSlot) quarantine() {
	sl.s.mu.Lock()
	sl.s.slots[sl.i].bad = true
	sl.s.mu.Unlock()
	sl.s.log.Error("a container could not be destroyed; its id slot is kept out of use", "uid", sl.uid)
}

// slotNS is what a backend needs to put a container in a slot's user namespace.
type slotNS struct {
	path     string // the namespace to join
	uid, gid uint32 // its owner
}

func (sl *idSlot) join() *slotNS { return &slotNS{path: sl.nsPath(), uid: sl.uid, gid: sl.gid} }

// prlimit lowers a resource limit of pid, a process in the namespace, as the namespace's owner.
func (n *slotNS) prlimit(pid, resource int, cur, max uint64) error {
	if r := C.axo_prlimit_as(C.uint(n.uid), C.uint(n.gid), C.int(pid), C.int(resource), C.ulonglong(cur), C.ulonglong(max)); r < 0 {
		return fmt.Errorf("prlimit %d of pid %d: %w", resource, pid, syscall.Errno(-r))
	}
	return nil
}

// nsPath names the slot's user namespace for a runtime to join: this process's fd for it.
func (sl *idSlot) nsPath() string {
	return "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(sl.ns.Fd()))
}

// close releases every slot; the caller has destroyed every container.
func (s *idSlots) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for i := range s.slots {
		if s.slots[i].held && !s.slots[i].bad {
			s.giveBack(i)
		}
	}
	s.idle = nil
	s.lock.Close()
}

// inUse counts the slots containers hold.
func (s *idSlots) inUse() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.slots {
		if st.inUse {
			n++
		}
	}
	return n
}

// liveProcess returns a pid whose /proc entry belongs to one of slot i's uids (a process running
// as one of them, or a non-dumpable one in a user namespace whose root is one of them), or 0.
func (s *idSlots) liveProcess(i int) int {
	d, err := os.Open("/proc")
	if err != nil {
		return 0
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	lo, hi := s.uids[i], s.uids[i]+idSlotSize
	for _, n := range names {
		if n[0] < '0' || n[0] > '9' {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+n, &st) == nil && st.Uid >= lo && st.Uid < hi {
			pid, _ := strconv.Atoi(n)
			return pid
		}
	}
	return 0
}

// spawn makes a user namespace owned by uid, mapping container ids 0–65535 to uid.. and gid..,
// and returns a handle on it.
func (s *idSlots) spawn(uid, gid uint32) (*os.File, error) {
	s.spawnMu.Lock()
	defer s.spawnMu.Unlock()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	pid := int(C.axo_spawn_userns(C.uint(uid), C.uint(gid), C.int(w.Fd())))
	w.Close()
	if pid < 0 {
		return nil, fmt.Errorf("fork: %w", syscall.Errno(-pid))
	}
	defer func() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		for {
			if _, err := syscall.Wait4(pid, &ws, 0, nil); !errors.Is(err, syscall.EINTR) {
				break
			}
		}
	}()
	var b [1]byte
	if n, err := r.Read(b[:]); n != 1 {
		return nil, fmt.Errorf("namespace helper died: %v", err)
	}
	if b[0] != 0 {
		return nil, fmt.Errorf("namespace helper: %w", syscall.Errno(b[0]))
	}
	for _, m := range []struct {
		file string
		base uint32
	}{{"uid_map", uid}, {"gid_map", gid}} {
		line := fmt.Sprintf("0 %d %d\n", m.base, idSlotSize)
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/%s", pid, m.file), []byte(line), 0); err != nil {
			return nil, err
		}
	}
	return os.OpenFile(fmt.Sprintf("/proc/%d/ns/user", pid), os.O_RDONLY|syscall.O_CLOEXEC, 0)
}
