// Package wasmbin reads and rewrites the few parts of a WebAssembly binary the Wasm tier cares
// about: the memory section (declared minimum) and the data section (merging many small active
// segments into few large ones, which makes every instantiation cheaper).
package wasmbin

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
)

const (
	secMemory    = 5
	secData      = 11
	secDataCount = 12

	opI32Const = 0x41
	opEnd      = 0x0b
)

var magic = []byte{0x00, 'a', 's', 'm', 0x01, 0x00, 0x00, 0x00}

// ErrFormat reports a malformed module.
var ErrFormat = errors.New("malformed wasm module")

type section struct {
	id      byte
	payload []byte
}

func parse(mod []byte) ([]section, error) {
	if len(mod) < 8 || !bytes.Equal(mod[:8], magic) {
		return nil, fmt.Errorf("%w: bad magic or version", ErrFormat)
	}
	var secs []section
	r := reader{b: mod, off: 8}
	for r.off < len(r.b) {
		id, err := r.byte()
		if err != nil {
			return nil, err
		}
		n, err := r.u32()
		if err != nil {
			return nil, err
		}
		p, err := r.bytes(int(n))
		if err != nil {
			return nil, err
		}
		secs = append(secs, section{id: id, payload: p})
	}
	return secs, nil
}

// Info is what the Wasm tier needs to know about a module before instantiating it.
type Info struct {
	// HasMemory is true when the module defines (not imports) a memory.
	HasMemory bool
	// MinPages is the defined memory's declared minimum, in 64 KiB pages.
	MinPages uint64
	// DataSegments counts the data section's segments.
	DataSegments int
}

// Inspect reads a module's memory and data sections.
func Inspect(mod []byte) (Info, error) {
	secs, err := parse(mod)
	if err != nil {
		return Info{}, err
	}
	var info Info
	for _, s := range secs {
		r := reader{b: s.payload}
		switch s.id {
		case secMemory:
			n, err := r.u32()
			if err != nil {
				return info, err
			}
			if n == 0 {
				continue
			}
			flags, err := r.byte()
			if err != nil {
				return info, err
			}
			min, err := r.u64()
			if err != nil {
				return info, err
			}
			_ = flags
			info.HasMemory, info.MinPages = true, min
		case secData:
			n, err := r.u32()
			if err != nil {
				return info, err
			}
			info.DataSegments = int(n)
		}
	}
	return info, nil
}

type segment struct {
	offset uint32
	data   []byte
}

// MergeData rewrites the data section so that active segments of memory 0 whose gaps are at most
// maxGap bytes become one segment (the gaps filled with zeros, which is what the memory holds
// there anyway). It returns mod unchanged (and false) when the module has passive segments,
// offsets that are not constants, overlapping segments, or nothing to merge: those keep the
// exact semantics of the original.
func MergeData(mod []byte, maxGap int) ([]byte, bool, error) {
	secs, err := parse(mod)
	if err != nil {
		return nil, false, err
	}
	di := -1
	for i, s := range secs {
		if s.id == secData {
			di = i
		}
	}
	if di < 0 {
		return mod, false, nil
	}
	segs, ok, err := readSegments(secs[di].payload)
	if err != nil || !ok || len(segs) < 2 {
		return mod, false, err
	}
	sort.SliceStable(segs, func(i, j int) bool { return segs[i].offset < segs[j].offset })
	var merged []segment
	for _, s := range segs {
		if len(s.data) == 0 {
			continue
		}
		if k := len(merged) - 1; k >= 0 {
			last := &merged[k]
			end := uint64(last.offset) + uint64(len(last.data))
			if uint64(s.offset) < end {
				return mod, false, nil // overlap: later segments win; keep the original order
			}
			if gap := uint64(s.offset) - end; gap <= uint64(maxGap) {
				last.data = append(last.data, make([]byte, gap)...)
				last.data = append(last.data, s.data...)
				continue
			}
		}
		merged = append(merged, segment{offset: s.offset, data: append([]byte(nil), s.data...)})
	}
	if len(merged) >= len(segs) {
		return mod, false, nil
	}
	var payload []byte
	payload = appendU32(payload, uint32(len(merged)))
	for _, s := range merged {
		payload = append(payload, 0x00, opI32Const)
		payload = appendS32(payload, int32(s.offset))
		payload = append(payload, opEnd)
		payload = appendU32(payload, uint32(len(s.data)))
		payload = append(payload, s.data...)
	}
	out := make([]byte, 0, len(mod))
	out = append(out, magic...)
	for i, s := range secs {
		p := s.payload
		switch {
		case i == di:
			p = payload
		case s.id == secDataCount:
			p = appendU32(nil, uint32(len(merged)))
		}
		out = append(out, s.id)
		out = appendU32(out, uint32(len(p)))
		out = append(out, p...)
	}
	return out, true, nil
}

// readSegments decodes the data section; ok is false when a segment is not an active segment of
// memory 0 at a constant offset.
func readSegments(p []byte) ([]segment, bool, error) {
	r := reader{b: p}
	n, err := r.u32()
	if err != nil {
		return nil, false, err
	}
	segs := make([]segment, 0, n)
	for i := uint32(0); i < n; i++ {
		flags, err := r.u32()
		if err != nil {
			return nil, false, err
		}
		switch flags {
		case 0:
		case 2:
			mem, err := r.u32()
			if err != nil {
				return nil, false, err
			}
			if mem != 0 {
				return nil, false, nil
			}
		default:
			return nil, false, nil
		}
		op, err := r.byte()
		if err != nil {
			return nil, false, err
		}
		if op != opI32Const {
			return nil, false, nil
		}
		off, err := r.s32()
		if err != nil {
			return nil, false, err
		}
		if end, err := r.byte(); err != nil || end != opEnd {
			return nil, false, err
		}
		size, err := r.u32()
		if err != nil {
			return nil, false, err
		}
		data, err := r.bytes(int(size))
		if err != nil {
			return nil, false, err
		}
		segs = append(segs, segment{offset: uint32(off), data: data})
	}
	if r.off != len(r.b) {
		return nil, false, fmt.Errorf("%w: trailing bytes in the data section", ErrFormat)
	}
	return segs, true, nil
}

type reader struct {
	b   []byte
	off int
}

func (r *reader) byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, fmt.Errorf("%w: unexpected end", ErrFormat)
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

func (r *reader) bytes(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.off {
		return nil, fmt.Errorf("%w: length %d past the end", ErrFormat, n)
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p, nil
}

func (r *reader) u64() (uint64, error) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			return v, nil
		}
	}
	return 0, fmt.Errorf("%w: LEB128 too long", ErrFormat)
}

func (r *reader) u32() (uint32, error) {
	v, err := r.u64()
	if err != nil {
		return 0, err
	}
	if v > 0xffffffff {
		return 0, fmt.Errorf("%w: u32 out of range", ErrFormat)
	}
	return uint32(v), nil
}

func (r *reader) s32() (int32, error) {
	v, err := r.s64()
	if err != nil {
		return 0, err
	}
	if v < -1<<31 || v > 1<<31-1 {
		return 0, fmt.Errorf("%w: s32 out of range", ErrFormat)
	}
	return int32(v), nil
}

func appendU32(b []byte, v uint32) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func appendS32(b []byte, v int32) []byte {
	x := int64(v)
	for {
		c := byte(x & 0x7f)
		x >>= 7
		if (x == 0 && c&0x40 == 0) || (x == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}
