package wasm

import (
	"golang.org/x/sys/unix"
)

// regionReserve is the address space reserved per region: all a 32-bit linear memory can address,
// so that growing never moves (or copies) the memory. Only touched pages cost RAM.
const regionReserve = 4 << 30

// resetKeep is how much of a released region is zeroed in place (kept resident for the next
// instance); the rest is handed back to the kernel, so an idle pool stays small.
const resetKeep = 16 << 20

// mmapRegion is an mmap-backed linear memory: it never moves, so growing is free.
type mmapRegion struct {
	mem []byte // the whole reservation, nil after release
	// high is the largest length handed out since the last reset: what may be dirty.
	high uint64
}

func newRegion() region {
	b, err := unix.Mmap(-1, 0, regionReserve, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return &heapRegion{}
	}
	return &mmapRegion{mem: b}
}

func (r *mmapRegion) grow(size uint64) []byte {
	if r.mem == nil || size > uint64(len(r.mem)) {
		return nil
	}
	if size > r.high {
		r.high = size
	}
	return r.mem[:size:size]
}

func (r *mmapRegion) reset() {
	if r.mem == nil {
		return
	}
	keep := r.high
	if keep > resetKeep {
		keep = resetKeep
		_ = unix.Madvise(r.mem[resetKeep:r.high], unix.MADV_DONTNEED)
	}
	clear(r.mem[:keep])
	r.high = 0
}

func (r *mmapRegion) release() {
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
		r.mem = nil
	}
}
