package wasmbin

import (
	"bytes"
	"context"
	"math"
	"testing"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// globalsModule has a memory of one page with a data segment, an immutable global and mutable
// i32, i64, f32 and f64 globals, and exports _initialize and run.
func globalsModule() []byte {
	m := append([]byte(nil), magic...)
	m = append(m, sec(1, []byte{1, 0x60, 0, 0})...)
	m = append(m, sec(3, []byte{2, 0, 0})...)
	m = append(m, sec(secMemory, []byte{1, 0x01, 0x01, 0x10})...) // min 1, max 16
	g := []byte{5,
		0x7f, 0x00, opI32Const, 0x07, opEnd,
		0x7f, 0x01, opI32Const, 0x01, opEnd,
		0x7e, 0x01, opI64Const, 0x02, opEnd,
		0x7d, 0x01, opF32Const, 0, 0, 0, 0, opEnd,
		0x7c, 0x01, opF64Const, 0, 0, 0, 0, 0, 0, 0, 0, opEnd}
	m = append(m, sec(secGlobal, g)...)
	exp := appendName([]byte{2}, "_initialize")
	exp = append(exp, 0, 0)
	exp = appendName(exp, "run")
	exp = append(exp, 0, 1)
	m = append(m, sec(secExport, exp)...)
	m = append(m, sec(secCode, []byte{2, 2, 0, opEnd, 2, 0, opEnd})...)
	m = append(m, sec(secData, []byte{1, 0, opI32Const, 0x10, opEnd, 3, 'a', 'b', 'c'})...)
	return m
}

func TestSnapshotRewrites(t *testing.T) {
	ctx := context.Background()
	rt := wazero.NewRuntime(ctx)
	defer rt.Close(ctx)
	mod := globalsModule()
	if ok, err := IsReactor(mod); err != nil || !ok {
		t.Fatalf("IsReactor: %v %v", ok, err)
	}
	if ok, _ := IsReactor(testModule(0, 0, nil)); ok {
		t.Fatal("a module exporting _start is not a reactor")
	}

	exp, mutable, ok, err := ExportGlobals(mod)
	if err != nil || !ok || len(mutable) != 4 {
		t.Fatalf("ExportGlobals: %v %v %+v", ok, err, mutable)
	}
	before, err := rt.InstantiateWithConfig(ctx, exp, wazero.NewModuleConfig().WithStartFunctions().WithName("before"))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range mutable {
		if before.ExportedGlobal(GlobalExport(g.Index)) == nil {
			t.Errorf("global %d not exported", g.Index)
		}
	}
	if b, _ := before.Memory().Read(0x10, 3); string(b) != "abc" {
		t.Errorf("original data: %q", b)
	}

	values := map[uint32]uint64{1: uint64(uint32(0xfffffff0)), 2: 1 << 40, 3: uint64(math.Float32bits(1.5)), 4: math.Float64bits(-2.25)}
	per, err := ApplySnapshot(exp, 3, values)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(per, []byte("abc")) {
		t.Error("the data segment survived")
	}
	inst, err := rt.InstantiateWithConfig(ctx, per, wazero.NewModuleConfig().WithStartFunctions())
	if err != nil {
		t.Fatal(err)
	}
	if got := inst.Memory().Size(); got != 3*65536 {
		t.Errorf("memory size %d, want 3 pages", got)
	}
	if b, _ := inst.Memory().Read(0x10, 3); string(b) != "\x00\x00\x00" {
		t.Errorf("data segment applied: %q", b)
	}
	want := map[uint32]uint64{0: 7}
	for k, v := range values {
		want[k] = v
	}
	for idx, v := range want {
		name := GlobalExport(idx)
		if idx == 0 {
			continue // immutable: not exported, kept as is
		}
		g := inst.ExportedGlobal(name)
		if g == nil {
			t.Fatalf("global %d not exported", idx)
		}
		if got := g.Get(); got != v {
			t.Errorf("global %d = %#x, want %#x (%s)", idx, got, v, api.ValueTypeName(g.Type()))
		}
	}
	if _, err := ApplySnapshot(exp, 17, values); err == nil {
		t.Error("a snapshot over the declared maximum was accepted")
	}
}
