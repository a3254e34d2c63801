package wasmbin

import (
	"fmt"
)

const (
	secStart = 8

	opI64Const = 0x42
	opF32Const = 0x43
	opF64Const = 0x44
)

// ReactorExport is the function a reactor tool exports to be called once per call, after its
// _initialize ran (once, before the snapshot).
const ReactorExport = "run"

// IsReactor reports whether mod can run in snapshot mode: it exports functions _initialize and
// run and no _start, and it has no start section (which would run again in every instance), no
// data count section (its code could re-apply data segments the snapshot drops) and no imported
// globals or memories (their state is not the module's to capture).
func IsReactor(mod []byte) (bool, error) {
	secs, err := parse(mod)
	if err != nil {
		return false, err
	}
	var initialize, run bool
	for _, s := range secs {
		switch s.id {
		case secStart, secDataCount:
			return false, nil
		case secImport:
			ok, err := onlyFunctionImports(s.payload)
			if err != nil || !ok {
				return false, err
			}
		case secExport:
			exps, err := exports(s.payload)
			if err != nil {
				return false, err
			}
			for _, e := range exps {
				switch {
				case e.name == "_start":
					return false, nil
				case e.name == "_initialize" && e.kind == 0:
					initialize = true
				case e.name == ReactorExport && e.kind == 0:
					run = true
				}
			}
		}
	}
	return initialize && run, nil
}

func onlyFunctionImports(p []byte) (bool, error) {
	r := reader{b: p}
	n, err := r.u32()
	if err != nil {
		return false, err
	}
	for i := uint32(0); i < n; i++ {
		if _, err := r.name(); err != nil {
			return false, err
		}
		if _, err := r.name(); err != nil {
			return false, err
		}
		kind, err := r.byte()
		if err != nil {
			return false, err
		}
		if kind != 0x00 {
			return false, nil
		}
		if _, err := r.u32(); err != nil {
			return false, err
		}
	}
	return true, nil
}

type export struct {
	name string
	kind byte
	idx  uint32
}

func exports(p []byte) ([]export, error) {
	r := reader{b: p}
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	out := make([]export, 0, n)
	for i := uint32(0); i < n; i++ {
		var e export
		if e.name, err = r.name(); err != nil {
			return nil, err
		}
		if e.kind, err = r.byte(); err != nil {
			return nil, err
		}
		if e.idx, err = r.u32(); err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// Global is one defined global of a module.
type Global struct {
	Index   uint32
	Type    byte // 0x7f i32, 0x7e i64, 0x7d f32, 0x7c f64
	Mutable bool
}

// GlobalExport is the name under which ExportGlobals exports global i.
func GlobalExport(i uint32) string { return fmt.Sprintf("__axocoatl_g%d", i) }

type global struct {
	Global
	init []byte // the init expression, with its end
}

// definedGlobals decodes the global section (indices start at importedGlobals).
func definedGlobals(p []byte, importedGlobals uint32) ([]global, error) {
	r := reader{b: p}
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	gs := make([]global, 0, n)
	for i := uint32(0); i < n; i++ {
		var g global
		g.Index = importedGlobals + i
		if g.Type, err = r.byte(); err != nil {
			return nil, err
		}
		mut, err := r.byte()
		if err != nil {
			return nil, err
		}
		g.Mutable = mut == 1
		start := r.off
		if err := r.constExpr(); err != nil {
			return nil, err
		}
		g.init = r.b[start:r.off]
		gs = append(gs, g)
	}
	if r.off != len(r.b) {
		return nil, fmt.Errorf("%w: trailing bytes in the global section", ErrFormat)
	}
	return gs, nil
}

// constExpr skips a constant expression, its end included.
func (r *reader) constExpr() error {
	for {
		op, err := r.byte()
		if err != nil {
			return err
		}
		switch op {
		case opEnd:
			return nil
		case opI32Const:
			_, err = r.s32()
		case opI64Const:
			_, err = r.s64()
		case opF32Const:
			_, err = r.bytes(4)
		case opF64Const:
			_, err = r.bytes(8)
		case opGlobalGet, 0xd2: // global.get, ref.func
			_, err = r.u32()
		case 0xd0: // ref.null
			_, err = r.byte()
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // extended constant expressions
		default:
			return errUnsupported
		}
		if err != nil {
			return err
		}
	}
}

// ExportGlobals exports every mutable defined global of mod as GlobalExport(index) and returns
// them, so that a host can read the state of an instance. A module with a global that is not a
// number (v128, references) is errUnsupported (reported as ok false).
func ExportGlobals(mod []byte) (out []byte, mutable []Global, ok bool, err error) {
	secs, err := parse(mod)
	if err != nil {
		return nil, nil, false, err
	}
	imported, err := countImportedGlobals(secs)
	if err != nil {
		return nil, nil, false, err
	}
	var extra []byte
	for _, s := range secs {
		if s.id != secGlobal {
			continue
		}
		gs, err := definedGlobals(s.payload, imported)
		if err == errUnsupported {
			return mod, nil, false, nil
		}
		if err != nil {
			return nil, nil, false, err
		}
		for _, g := range gs {
			if !g.Mutable {
				continue
			}
			if g.Type < 0x7c || g.Type > 0x7f {
				return mod, nil, false, nil
			}
			mutable = append(mutable, g.Global)
			extra = appendName(extra, GlobalExport(g.Index))
			extra = append(extra, 0x03)
			extra = appendU32(extra, g.Index)
		}
	}
	out = append(make([]byte, 0, len(mod)+len(extra)+16), magic...)
	for _, s := range secs {
		p := s.payload
		if s.id == secExport {
			r := reader{b: p}
			n, _ := r.u32()
			p = appendVec(nil, n+uint32(len(mutable)), p[r.off:], extra)
		}
		out = append(out, s.id)
		out = appendU32(out, uint32(len(p)))
		out = append(out, p...)
	}
	return out, mutable, true, nil
}

// ApplySnapshot rewrites mod (the module ExportGlobals was given) to start from a captured
// state: the defined memory's minimum becomes pages (the host supplies its content), the data
// section is dropped (its content is part of the snapshot) and the mutable globals listed in
// values (index → bits) start with those values.
func ApplySnapshot(mod []byte, pages uint32, values map[uint32]uint64) ([]byte, error) {
	secs, err := parse(mod)
	if err != nil {
		return nil, err
	}
	imported, err := countImportedGlobals(secs)
	if err != nil {
		return nil, err
	}
	out := append(make([]byte, 0, len(mod)), magic...)
	for _, s := range secs {
		p := s.payload
		switch s.id {
		case secData:
			continue
		case secMemory:
			if p, err = setMemoryMin(p, pages); err != nil {
				return nil, err
			}
		case secGlobal:
			gs, err := definedGlobals(p, imported)
			if err != nil {
				return nil, err
			}
			p = appendU32(nil, uint32(len(gs)))
			for _, g := range gs {
				p = append(p, g.Type, 0)
				if g.Mutable {
					p[len(p)-1] = 1
				}
				v, ok := values[g.Index]
				if !ok || !g.Mutable {
					p = append(p, g.init...)
					continue
				}
				switch g.Type {
				case 0x7f:
					p = appendS32(append(p, opI32Const), int32(uint32(v)))
				case 0x7e:
					p = appendS64(append(p, opI64Const), int64(v))
				case 0x7d:
					p = appendLE(append(p, opF32Const), uint64(uint32(v)), 4)
				case 0x7c:
					p = appendLE(append(p, opF64Const), v, 8)
				default:
					return nil, fmt.Errorf("%w: global %d of type %#x", errUnsupported, g.Index, g.Type)
				}
				p = append(p, opEnd)
			}
		}
		out = append(out, s.id)
		out = appendU32(out, uint32(len(p)))
		out = append(out, p...)
	}
	return out, nil
}

func setMemoryMin(p []byte, pages uint32) ([]byte, error) {
	r := reader{b: p}
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	if n != 1 {
		return nil, fmt.Errorf("%w: %d memories", errUnsupported, n)
	}
	flags, err := r.byte()
	if err != nil {
		return nil, err
	}
	if flags&^1 != 0 {
		return nil, fmt.Errorf("%w: memory flags %#x", errUnsupported, flags)
	}
	if _, err := r.u32(); err != nil {
		return nil, err
	}
	out := appendU32([]byte{1, flags}, pages)
	if flags&1 != 0 {
		max, err := r.u32()
		if err != nil {
			return nil, err
		}
		if max < pages {
			return nil, fmt.Errorf("%w: snapshot of %d pages over the maximum %d", ErrFormat, pages, max)
		}
		out = appendU32(out, max)
	}
	return out, nil
}

func appendS64(b []byte, v int64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func appendLE(b []byte, v uint64, n int) []byte {
	for i := 0; i < n; i++ {
		b = append(b, byte(v>>(8*i)))
	}
	return b
}
