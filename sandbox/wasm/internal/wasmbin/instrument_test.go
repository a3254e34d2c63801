package wasmbin

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/tetratelabs/wazero/api"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

func sec(id byte, payload []byte) []byte {
	return append(appendU32([]byte{id}, uint32(len(payload))), payload...)
}

// testModule assembles a module: types () -> (), (i32) -> (i32) and () -> i32, an import of
// wasi_snapshot_preview1.sched_yield (function 0), optional imported and defined i32 globals, a
// funcref table, one memory page, function 1 of type 0 with body code (no locals) exported as
// _start, and the extra sections (already encoded) at the end.
func testModule(importGlobals, defineGlobals int, code []byte, extra ...[]byte) []byte {
	m := append([]byte(nil), magic...)
	m = append(m, sec(1, []byte{3, 0x60, 0, 0, 0x60, 1, 0x7f, 1, 0x7f, 0x60, 0, 1, 0x7f})...)
	{
		p := appendU32(nil, uint32(importGlobals+1))
		p = appendName(p, "wasi_snapshot_preview1")
		p = appendName(p, "sched_yield")
		p = append(p, 0x00, 0x02)
		for i := 0; i < importGlobals; i++ {
			p = appendName(p, "env")
			p = appendName(p, string(rune('a'+i)))
			p = append(p, 0x03, 0x7f, 0x00)
		}
		m = append(m, sec(secImport, p)...)
	}
	m = append(m, sec(3, []byte{1, 0})...)
	m = append(m, sec(4, []byte{1, 0x70, 0x00, 0x01})...)
	m = append(m, sec(secMemory, []byte{1, 0x00, 0x01})...)
	if defineGlobals > 0 {
		p := appendU32(nil, uint32(defineGlobals))
		for i := 0; i < defineGlobals; i++ {
			p = append(p, 0x7f, 0x01, opI32Const, byte(i), opEnd)
		}
		m = append(m, sec(secGlobal, p)...)
	}
	m = append(m, sec(secExport, append(appendName([]byte{1}, "_start"), 0x00, 0x01))...)
	body := append([]byte{0}, code...)
	body = append(body, opEnd)
	m = append(m, sec(secCode, append(appendU32([]byte{1}, uint32(len(body))), body...))...)
	for _, e := range extra {
		m = append(m, e...)
	}
	return m
}

func v128() []byte { return append([]byte{0xfd, 0x0c}, make([]byte, 16)...) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// TestInstrumentLoops instruments bodies using every family of immediates the walker decodes,
// has wazero validate the result, and checks one stop check per loop (a misread immediate
// would misplace or miss checks, or make the module invalid).
func TestInstrumentLoops(t *testing.T) {
	i32 := func(v byte) []byte { return []byte{opI32Const, v} }
	drop := []byte{0x1a}
	tests := []struct {
		name  string
		code  []byte
		loops int
	}{
		{"empty loop", []byte{opLoop, blockEmpty, opEnd}, 1},
		{"loop with a type-index block type", cat(i32(1), []byte{opLoop, 0x01, opEnd}, drop), 1},
		{"nested loops, if/else", cat([]byte{opLoop, blockEmpty, opLoop, 0x7f}, i32(0), []byte{opEnd, opIf, blockEmpty, 0x01, 0x05, 0x01, opEnd, opEnd}), 2},
		{"br_table", cat([]byte{0x02, blockEmpty}, i32(0), []byte{0x0e, 2, 0, 0, 0, opEnd}), 0},
		{"memory access", cat(i32(0), []byte{0x28, 0x02, 0x84, 0x01}, drop, []byte{0x3f, 0}, drop), 0},
		{"constants", cat([]byte{0x42, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, drop, []byte{0x44, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f}, drop, []byte{0x41, 0x80, 0x7f}, drop), 0},
		{"saturating truncation, bulk memory", cat([]byte{0x43, 0, 0, 0, 0, 0xfc, 0x00}, drop, i32(0), i32(0), i32(0), []byte{0xfc, 0x0b, 0x00}, i32(0), i32(0), i32(0), []byte{0xfc, 0x0a, 0x00, 0x00}), 0},
		{"SIMD", cat(v128(), []byte{0xfd, 0x15, 0x03}, drop, v128(), v128(), []byte{0xfd, 0x0d}, make([]byte, 16), drop,
			i32(0), v128(), []byte{0xfd, 0x54, 0x00, 0x00, 0x00}, drop, v128(), v128(), []byte{0xfd, 0xae, 0x01}, drop,
			[]byte{opLoop, blockEmpty, opEnd}), 1},
		{"reference types, typed select", cat([]byte{0xd0, 0x70, 0xd1}, drop, i32(0), []byte{0x25, 0x00, 0xd1}, drop, i32(1), i32(2), i32(0), []byte{0x1c, 0x01, 0x7f}, drop), 0},
		{"calls", cat([]byte{0x10, 0x01}, i32(0), []byte{0x11, 0x00, 0x00}), 0},
	}
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mod := testModule(0, 0, tt.code)
			if _, err := rt.CompileModule(ctx, mod); err != nil {
				t.Fatalf("the test module itself is invalid: %v", err)
			}
			out, ok, err := InstrumentLoops(mod)
			if err != nil || !ok {
				t.Fatalf("instrument: %v %v", ok, err)
			}
			if _, err := rt.CompileModule(ctx, out); err != nil {
				t.Fatalf("instrumented module is invalid: %v", err)
			}
			check := []byte{opGlobalGet, 0, opI32Const, 1, opI32LtS, opIf, blockEmpty, 0x10, 0x00, 0x1a}
			if got := bytes.Count(out, check); got != tt.loops {
				t.Fatalf("%d stop checks, want %d", got, tt.loops)
			}
			if _, ok, _ := InstrumentLoops(out); ok {
				t.Fatal("instrumented twice: the stop export must be detected")
			}
		})
	}
}

// TestInstrumentGlobalIndex: the stop flag comes after imported and defined globals, and the
// sections are emitted in the required order (with and without a global section).
func TestInstrumentGlobalIndex(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	loop := []byte{opLoop, blockEmpty, opEnd}
	debug := sec(secCustom, append(appendName(nil, ".debug_info"), 1, 2, 3))
	names := sec(secCustom, append(appendName(nil, "name"), 1, 4, 1, 0, 1, 'f')) // function 0 is "f"
	for _, tt := range []struct {
		imported, defined int
	}{{0, 0}, {0, 3}, {2, 0}, {2, 2}} {
		mod := testModule(tt.imported, tt.defined, loop, debug, names)
		out, ok, err := InstrumentLoops(mod)
		if err != nil || !ok {
			t.Fatalf("%+v: %v %v", tt, ok, err)
		}
		want := uint32(tt.imported + tt.defined)
		if !bytes.Contains(out, append(appendU32([]byte{opGlobalGet}, want), opI32Const, 1, opI32LtS, opIf)) {
			t.Errorf("%+v: no check of global %d", tt, want)
		}
		if bytes.Contains(out, []byte(".debug_info")) || !bytes.Contains(out, []byte("name")) {
			t.Errorf("%+v: want DWARF dropped and the name section kept", tt)
		}
		c, err := rt.CompileModule(ctx, out)
		if err != nil {
			t.Fatalf("%+v: %v", tt, err)
		}
		if _, ok := c.ExportedFunctions()["_start"]; !ok {
			t.Errorf("%+v: lost _start", tt)
		}
	}
}

func TestInstrumentUnsupportedAndMalformed(t *testing.T) {
	// No sched_yield import: nothing to call into the host with, the module is returned as is.
	noYield := globalsModule()
	if out, ok, err := InstrumentLoops(noYield); err != nil || ok || !bytes.Equal(out, noYield) {
		t.Fatalf("no sched_yield: ok %v err %v", ok, err)
	}
	// A GC-prefixed instruction: unknown to the walker, the module is returned as is.
	mod := testModule(0, 0, []byte{0xfb, 0x00, 0x00})
	out, ok, err := InstrumentLoops(mod)
	if err != nil || ok || !bytes.Equal(out, mod) {
		t.Fatalf("unknown instruction: ok %v err %v", ok, err)
	}
	// A truncated immediate is a format error.
	bad := testModule(0, 0, []byte{0x44, 0, 0})
	if _, _, err := InstrumentLoops(bad); !errors.Is(err, ErrFormat) {
		t.Fatalf("truncated: %v", err)
	}
	if _, _, err := InstrumentLoops([]byte("garbage")); !errors.Is(err, ErrFormat) {
		t.Fatalf("garbage: %v", err)
	}
}

// TestStopSurvivesRacingDecrement: the host's store of 0 into the budget races with the guest's
// two loads of it (one for the test, one for the decrement), so the guest can store -1. Such a
// budget must still make the guest call sched_yield at once and then every YieldBudget
// iterations. With the old "== 0" test a -1 counted down through 2^32 iterations before the next
// sched_yield: a stopped guest ran on for up to a minute, stalling the garbage collector of the
// whole process (seen with spinning Go guests under GC pressure).
func TestStopSurvivesRacingDecrement(t *testing.T) {
	const iterations = 100_000
	// loop: g0++; br_if 0 (g0 < iterations)
	code := cat([]byte{opLoop, blockEmpty, opGlobalGet, 0, opI32Const, 1, 0x6a, 0x24, 0},
		[]byte{opGlobalGet, 0}, appendS32([]byte{opI32Const}, iterations), []byte{opI32LtS, 0x0d, 0, opEnd})
	out, ok, err := InstrumentLoops(testModule(0, 1, code))
	if err != nil || !ok {
		t.Fatalf("instrument: %v %v", ok, err)
	}
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	yields := 0
	if _, err := rt.NewHostModuleBuilder("wasi_snapshot_preview1").NewFunctionBuilder().
		WithFunc(func() int32 { yields++; return 0 }).Export("sched_yield").Instantiate(ctx); err != nil {
		t.Fatal(err)
	}
	for _, start := range []int32{-1, -5, 0, YieldBudget} {
		yields = 0
		mod, err := rt.InstantiateModule(ctx, mustCompile(t, rt, out), wazero.NewModuleConfig().WithName("").WithStartFunctions())
		if err != nil {
			t.Fatal(err)
		}
		mod.ExportedGlobal(StopExport).(api.MutableGlobal).Set(api.EncodeI32(start))
		if _, err := mod.ExportedFunction("_start").Call(ctx); err != nil {
			t.Fatal(err)
		}
		want := iterations / YieldBudget
		if start < 1 {
			want++ // the first loop header yields at once
		}
		if yields < want {
			t.Errorf("budget %d: %d calls of sched_yield in %d iterations, want at least %d", start, yields, iterations, want)
		}
		mod.Close(ctx)
	}
}

func mustCompile(t *testing.T, rt wazero.Runtime, bin []byte) wazero.CompiledModule {
	t.Helper()
	c, err := rt.CompileModule(context.Background(), bin)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
