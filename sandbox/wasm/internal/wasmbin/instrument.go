package wasmbin

import (
	"errors"
	"fmt"
	"strings"
)

// StopExport is the name under which InstrumentLoops exports the budget global: the host sets
// it to 0 to make the guest call sched_yield at its next loop header.
const StopExport = "__axocoatl_stop"

// YieldBudget is how many loop iterations run between two calls of sched_yield: each call is a
// trip through Go, where the goroutine can be preempted (for the scheduler and the garbage
// collector's stop-the-world) and where the host stops the guest. Compiled wasm is never
// preempted otherwise: a guest that only loops would stall the whole process.
const YieldBudget = 1 << 14

const (
	secCustom = 0
	secImport = 2
	secGlobal = 6
	secExport = 7
	secCode   = 10

	opLoop        = 0x03
	opIf          = 0x04
	opUnreachable = 0x00
	opGlobalGet   = 0x23
	opI32LtS      = 0x48
	blockEmpty    = 0x40
)

// errUnsupported stops the instrumentation of a module the walker cannot read completely: the
// caller keeps the original module (and the engine's own, slower, termination checks).
var errUnsupported = errors.New("unsupported instruction")

// InstrumentLoops makes a module stoppable and preemptible without the engine's help (wazero's
// own mechanism leaves native code at every loop iteration). It adds a mutable i32 global, the
// budget, exported as StopExport and initially YieldBudget, and at the head of every loop (and
// at the entry of every function that makes tail calls) it inserts
//
//	if budget < 1 { sched_yield(); budget = YieldBudget }
//	budget--
//
// calling the module's own import of wasi_snapshot_preview1.sched_yield. Every unbounded
// execution passes through a loop header, a tail call or recursion (which overflows the stack),
// so the guest calls into the host at least every YieldBudget iterations, and at once after the
// host set the budget to 0. The host's store races with the guest's two loads of the budget: a
// guest that read 1 for the test and then the host's 0 for the decrement stores -1. The test is
// therefore signed (< 1, not == 0): with "== 0" that -1 counted down through 2^32 iterations, a
// guest ran on for a minute past its deadline and, never calling into Go, stalled the garbage
// collector's stop-the-world for the whole process. A racing decrement can now only delay the
// stop by one budget. The host's sched_yield then traps the guest when its call must stop.
//
// It returns mod unchanged (and false) when the module does not import sched_yield (as
// () -> i32), when it meets an instruction it does not know, when the module already exports
// StopExport, or when it has no code. DWARF custom sections are dropped
// (their code offsets would be wrong); the name section is kept (it refers to indices only).
func InstrumentLoops(mod []byte) ([]byte, bool, error) {
	secs, err := parse(mod)
	if err != nil {
		return nil, false, err
	}
	importedGlobals, err := countImportedGlobals(secs)
	if err != nil {
		return nil, false, err
	}
	definedGlobals := uint32(0)
	hasCode := false
	for _, s := range secs {
		switch s.id {
		case secGlobal:
			r := reader{b: s.payload}
			if definedGlobals, err = r.u32(); err != nil {
				return nil, false, err
			}
		case secExport:
			names, err := exportNames(s.payload)
			if err != nil {
				return nil, false, err
			}
			for _, n := range names {
				if n == StopExport {
					return mod, false, nil
				}
			}
		case secCode:
			hasCode = true
		}
	}
	if !hasCode {
		return mod, false, nil
	}
	yield, ok, err := findYield(secs)
	if err != nil || !ok {
		return mod, false, err
	}
	stop := importedGlobals + definedGlobals
	get := appendU32([]byte{opGlobalGet}, stop)
	set := appendU32([]byte{0x24}, stop)
	check := append([]byte(nil), get...)
	check = append(check, opI32Const, 1, opI32LtS, opIf, blockEmpty, 0x10) // i32.const 1 i32.lt_s if call
	check = appendU32(check, yield)
	check = append(check, 0x1a, opI32Const) // drop i32.const
	check = appendS32(check, YieldBudget)
	check = append(check, set...)
	check = append(check, opEnd)
	check = append(check, get...)
	check = append(check, opI32Const, 1, 0x6b) // i32.const 1 i32.sub
	check = append(check, set...)

	newGlobal := appendS32([]byte{0x7f, 0x01, opI32Const}, YieldBudget) // mutable i32
	newGlobal = append(newGlobal, opEnd)
	newExport := appendName(nil, StopExport)
	newExport = append(newExport, 0x03) // global
	newExport = appendU32(newExport, stop)

	out := make([]byte, 0, len(mod)+len(mod)/8)
	out = append(out, magic...)
	emit := func(id byte, p []byte) {
		out = append(out, id)
		out = appendU32(out, uint32(len(p)))
		out = append(out, p...)
	}
	addedGlobal, addedExport := false, false
	for _, s := range secs {
		if s.id == secCustom {
			r := reader{b: s.payload}
			if name, err := r.name(); err == nil && strings.HasPrefix(name, ".debug_") {
				continue
			}
			emit(s.id, s.payload)
			continue
		}
		// Sections that must come after the global (or export) section: add the missing ones first.
		if !addedGlobal && order(s.id) > order(secGlobal) {
			emit(secGlobal, appendVec(nil, 1, nil, newGlobal))
			addedGlobal = true
		}
		if !addedExport && order(s.id) > order(secExport) {
			emit(secExport, appendVec(nil, 1, nil, newExport))
			addedExport = true
		}
		switch s.id {
		case secGlobal:
			r := reader{b: s.payload}
			n, _ := r.u32()
			emit(secGlobal, appendVec(nil, n+1, s.payload[r.off:], newGlobal))
			addedGlobal = true
		case secExport:
			r := reader{b: s.payload}
			n, _ := r.u32()
			emit(secExport, appendVec(nil, n+1, s.payload[r.off:], newExport))
			addedExport = true
		case secCode:
			p, err := instrumentCode(s.payload, check)
			if errors.Is(err, errUnsupported) {
				return mod, false, nil
			}
			if err != nil {
				return nil, false, err
			}
			emit(secCode, p)
		default:
			emit(s.id, s.payload)
		}
	}
	return out, true, nil
}

// findYield returns the function index of the module's import of
// wasi_snapshot_preview1.sched_yield, when its type is () -> i32.
func findYield(secs []section) (uint32, bool, error) {
	var types [][]byte
	for _, s := range secs {
		if s.id != 1 {
			continue
		}
		r := reader{b: s.payload}
		n, err := r.u32()
		if err != nil {
			return 0, false, err
		}
		for i := uint32(0); i < n; i++ {
			start := r.off
			if form, err := r.byte(); err != nil || form != 0x60 {
				return 0, false, err // not a plain function type: leave the module alone
			}
			for k := 0; k < 2; k++ {
				m, err := r.u32()
				if err != nil {
					return 0, false, err
				}
				if _, err := r.bytes(int(m)); err != nil {
					return 0, false, err
				}
			}
			types = append(types, r.b[start:r.off])
		}
	}
	for _, s := range secs {
		if s.id != secImport {
			continue
		}
		r := reader{b: s.payload}
		n, err := r.u32()
		if err != nil {
			return 0, false, err
		}
		var funcs uint32
		for i := uint32(0); i < n; i++ {
			mod, err := r.name()
			if err != nil {
				return 0, false, err
			}
			name, err := r.name()
			if err != nil {
				return 0, false, err
			}
			kind, err := r.byte()
			if err != nil {
				return 0, false, err
			}
			if kind != 0x00 {
				if err := r.skipImport(kind); err != nil {
					return 0, false, err
				}
				continue
			}
			ti, err := r.u32()
			if err != nil {
				return 0, false, err
			}
			if mod == "wasi_snapshot_preview1" && name == "sched_yield" {
				ok := int(ti) < len(types) && string(types[ti]) == "\x60\x00\x01\x7f"
				return funcs, ok, nil
			}
			funcs++
		}
	}
	return 0, false, nil
}

// order is a section's rank in the order the binary format requires.
func order(id byte) int {
	switch id {
	case 13: // tag
		return 55
	case secDataCount:
		return 95
	default:
		return int(id) * 10
	}
}

func appendVec(b []byte, n uint32, items, extra []byte) []byte {
	b = appendU32(b, n)
	b = append(b, items...)
	return append(b, extra...)
}

func appendName(b []byte, s string) []byte {
	b = appendU32(b, uint32(len(s)))
	return append(b, s...)
}

func (r *reader) name() (string, error) {
	n, err := r.u32()
	if err != nil {
		return "", err
	}
	b, err := r.bytes(int(n))
	return string(b), err
}

func (r *reader) limits() error {
	flags, err := r.byte()
	if err != nil {
		return err
	}
	if _, err := r.u64(); err != nil {
		return err
	}
	if flags&1 != 0 {
		_, err = r.u64()
	}
	return err
}

func countImportedGlobals(secs []section) (uint32, error) {
	var globals uint32
	for _, s := range secs {
		if s.id != secImport {
			continue
		}
		r := reader{b: s.payload}
		n, err := r.u32()
		if err != nil {
			return 0, err
		}
		for i := uint32(0); i < n; i++ {
			if _, err := r.name(); err != nil {
				return 0, err
			}
			if _, err := r.name(); err != nil {
				return 0, err
			}
			kind, err := r.byte()
			if err != nil {
				return 0, err
			}
			if kind == 0x03 {
				globals++
			}
			err = r.skipImport(kind)
			if err != nil {
				return 0, err
			}
		}
	}
	return globals, nil
}

// skipImport reads an import's descriptor of the given kind.
func (r *reader) skipImport(kind byte) (err error) {
	switch kind {
	case 0x00: // func: type index
		_, err = r.u32()
	case 0x01: // table: reftype, limits
		if _, err = r.byte(); err == nil {
			err = r.limits()
		}
	case 0x02: // memory
		err = r.limits()
	case 0x03: // global: valtype, mutability
		if _, err = r.byte(); err == nil {
			_, err = r.byte()
		}
	case 0x04: // tag: attribute, type index
		if _, err = r.byte(); err == nil {
			_, err = r.u32()
		}
	default:
		return fmt.Errorf("%w: import kind %#x", ErrFormat, kind)
	}
	return err
}

func exportNames(p []byte) ([]string, error) {
	r := reader{b: p}
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, n)
	for i := uint32(0); i < n; i++ {
		name, err := r.name()
		if err != nil {
			return nil, err
		}
		if _, err := r.byte(); err != nil {
			return nil, err
		}
		if _, err := r.u32(); err != nil {
			return nil, err
		}
		names = append(names, name)
	}
	return names, nil
}

// instrumentCode rewrites every function body of a code section payload.
func instrumentCode(p []byte, check []byte) ([]byte, error) {
	r := reader{b: p}
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(p)+len(p)/8)
	out = appendU32(out, n)
	var body []byte
	var loops []int
	for i := uint32(0); i < n; i++ {
		size, err := r.u32()
		if err != nil {
			return nil, err
		}
		code, err := r.bytes(int(size))
		if err != nil {
			return nil, err
		}
		bodyStart, tail, err := scanBody(code, &loops)
		if err != nil {
			return nil, err
		}
		body = body[:0]
		prev := 0
		if tail {
			body = append(body, code[:bodyStart]...)
			body = append(body, check...)
			prev = bodyStart
		}
		for _, at := range loops {
			body = append(body, code[prev:at]...)
			body = append(body, check...)
			prev = at
		}
		body = append(body, code[prev:]...)
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
	}
	if r.off != len(r.b) {
		return nil, fmt.Errorf("%w: trailing bytes in the code section", ErrFormat)
	}
	return out, nil
}

// scanBody walks one function body. It returns where the instructions start (after the local
// declarations), whether the body makes tail calls, and in *loops the offsets just after each
// loop instruction (where the check goes).
func scanBody(code []byte, loops *[]int) (start int, tail bool, err error) {
	*loops = (*loops)[:0]
	r := reader{b: code}
	groups, err := r.u32()
	if err != nil {
		return 0, false, err
	}
	for i := uint32(0); i < groups; i++ {
		if _, err := r.u32(); err != nil {
			return 0, false, err
		}
		t, err := r.byte()
		if err != nil {
			return 0, false, err
		}
		if !isPlainValType(t) {
			return 0, false, errUnsupported
		}
	}
	start = r.off
	for r.off < len(r.b) {
		op, _ := r.byte()
		switch {
		case op == 0x02 || op == opLoop || op == opIf || op == 0x06: // block, loop, if, try
			if err = r.blockType(); err != nil {
				return 0, false, err
			}
			if op == opLoop {
				*loops = append(*loops, r.off)
			}
		case op == 0x00 || op == 0x01 || op == 0x05 || op == 0x0a || op == 0x0b || op == 0x0f ||
			op == 0x19 || op == 0x1a || op == 0x1b || op == 0xd1 || op == 0xd3 || op == 0xd4 ||
			(op >= 0x45 && op <= 0xc4):
			// no immediate
		case op == 0x07 || op == 0x08 || op == 0x09 || op == 0x18 || op == 0x0c || op == 0x0d ||
			op == 0x10 || op == 0x14 || (op >= 0x20 && op <= 0x26) || op == 0xd2 || op == 0xd5 || op == 0xd6:
			_, err = r.u32()
		case op == 0x12 || op == 0x15: // return_call, return_call_ref
			tail = true
			_, err = r.u32()
		case op == 0x11 || op == 0x13: // call_indirect, return_call_indirect: type, table
			tail = tail || op == 0x13
			if _, err = r.u32(); err == nil {
				_, err = r.u32()
			}
		case op == 0x0e: // br_table
			var n uint32
			if n, err = r.u32(); err == nil {
				for i := uint32(0); i <= n && err == nil; i++ {
					_, err = r.u32()
				}
			}
		case op == 0x1c: // select t*
			var n uint32
			if n, err = r.u32(); err == nil {
				for i := uint32(0); i < n && err == nil; i++ {
					var t byte
					if t, err = r.byte(); err == nil && !isPlainValType(t) {
						err = errUnsupported
					}
				}
			}
		case op == 0x1f: // try_table: block type, catch clauses
			err = r.tryTable()
		case op >= 0x28 && op <= 0x3e:
			err = r.memarg()
		case op == 0x3f || op == 0x40: // memory.size, memory.grow
			_, err = r.u32()
		case op == 0x41:
			_, err = r.s32()
		case op == 0x42:
			_, err = r.s64()
		case op == 0x43:
			_, err = r.bytes(4)
		case op == 0x44:
			_, err = r.bytes(8)
		case op == 0xd0: // ref.null heap type
			var t byte
			if t, err = r.byte(); err == nil && t != 0x70 && t != 0x6f {
				err = errUnsupported
			}
		case op == 0xfc:
			err = r.prefixFC()
		case op == 0xfd:
			err = r.prefixFD()
		case op == 0xfe:
			err = r.prefixFE()
		default:
			err = errUnsupported
		}
		if err != nil {
			return 0, false, err
		}
	}
	return start, tail, nil
}

// isPlainValType: i32, i64, f32, f64, v128, funcref, externref.
func isPlainValType(t byte) bool {
	return (t >= 0x7b && t <= 0x7f) || t == 0x70 || t == 0x6f
}

func (r *reader) blockType() error {
	c, err := r.byte()
	if err != nil {
		return err
	}
	if c == blockEmpty || isPlainValType(c) {
		return nil
	}
	if c&0x40 != 0 && c&0x80 == 0 {
		return errUnsupported // another negative one-byte type (typed references, GC)
	}
	r.off-- // a type index (s33, non-negative)
	_, err = r.s64()
	return err
}

func (r *reader) tryTable() error {
	if err := r.blockType(); err != nil {
		return err
	}
	n, err := r.u32()
	if err != nil {
		return err
	}
	for i := uint32(0); i < n; i++ {
		kind, err := r.byte()
		if err != nil {
			return err
		}
		switch kind {
		case 0x00, 0x01: // catch, catch_ref: tag, label
			if _, err := r.u32(); err != nil {
				return err
			}
		case 0x02, 0x03: // catch_all, catch_all_ref: label
		default:
			return errUnsupported
		}
		if _, err := r.u32(); err != nil {
			return err
		}
	}
	return nil
}

// memarg reads an alignment (with the multi-memory flag: a memory index follows) and an offset.
func (r *reader) memarg() error {
	align, err := r.u32()
	if err != nil {
		return err
	}
	if align&0x40 != 0 {
		if _, err := r.u32(); err != nil {
			return err
		}
	}
	_, err = r.u64()
	return err
}

func (r *reader) prefixFC() error {
	sub, err := r.u32()
	if err != nil {
		return err
	}
	switch {
	case sub <= 7: // saturating truncations
		return nil
	case sub == 8 || sub == 10 || sub == 12 || sub == 14: // memory.init, memory.copy, table.init, table.copy
		if _, err := r.u32(); err != nil {
			return err
		}
		_, err = r.u32()
	case sub == 9 || sub == 11 || sub == 13 || (sub >= 15 && sub <= 17): // data.drop, memory.fill, elem.drop, table.grow/size/fill
		_, err = r.u32()
	default:
		return errUnsupported
	}
	return err
}

func (r *reader) prefixFD() error {
	sub, err := r.u32()
	if err != nil {
		return err
	}
	switch {
	case sub <= 11 || sub == 92 || sub == 93: // loads, store, load32_zero, load64_zero
		return r.memarg()
	case sub == 12 || sub == 13: // v128.const, i8x16.shuffle
		_, err = r.bytes(16)
	case sub >= 21 && sub <= 34: // extract_lane, replace_lane
		_, err = r.byte()
	case sub >= 84 && sub <= 91: // load*_lane, store*_lane
		if err = r.memarg(); err == nil {
			_, err = r.byte()
		}
	case sub <= 0x113: // everything else (relaxed SIMD included) has no immediate
		return nil
	default:
		return errUnsupported
	}
	return err
}

func (r *reader) prefixFE() error {
	sub, err := r.u32()
	if err != nil {
		return err
	}
	switch {
	case sub == 0x03: // atomic.fence
		_, err = r.byte()
	case sub <= 0x02 || (sub >= 0x10 && sub <= 0x4e):
		return r.memarg()
	default:
		return errUnsupported
	}
	return err
}

func (r *reader) s64() (int64, error) {
	var v int64
	var shift uint
	for {
		c, err := r.byte()
		if err != nil {
			return 0, err
		}
		v |= int64(c&0x7f) << shift
		shift += 7
		if c&0x80 == 0 {
			if shift < 64 && c&0x40 != 0 {
				v |= -1 << shift
			}
			return v, nil
		}
		if shift >= 70 {
			return 0, fmt.Errorf("%w: LEB128 too long", ErrFormat)
		}
	}
}
