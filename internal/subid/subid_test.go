package subid

import (
	"errors"
	"reflect"
	"testing"
)

func TestParse(t *testing.T) {
	in := "# comment\n\nalice:100000:65536\nbroken\nbob:x:1\n1000:200000:65536\nzero:5:0\nover:4294967290:10\naxocoatl:1073741824:131072\n  carol:300000:10  \n" +
		"a:b:c:d\n:1:2\n"
	got := Parse([]byte(in))
	want := []Entry{
		{"alice", Range{100000, 65536}},
		{"1000", Range{200000, 65536}},
		{"axocoatl", Range{1073741824, 131072}},
		{"carol", Range{300000, 10}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Parse = %+v\nwant %+v", got, want)
	}
}

func TestOfMergesAndMatchesUID(t *testing.T) {
	es := Parse([]byte("u:300:100\nu:100:100\n999:150:100\nother:0:1000\nu:500:10\n"))
	tests := []struct {
		uid  string
		want []Range
	}{
		{"", []Range{{100, 100}, {300, 100}, {500, 10}}},
		{"999", []Range{{100, 150}, {300, 100}, {500, 10}}}, // 100-199 and 150-249 merge
	}
	for _, tc := range tests {
		if got := Of(es, "u", tc.uid); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Of(u, %q) = %v, want %v", tc.uid, got, tc.want)
		}
	}
}

func TestSlots(t *testing.T) {
	tests := []struct {
		name   string
		ranges []Range
		max    int
		want   []uint32
	}{
		{"aligned", []Range{{1 << 30, 3 * 65536}}, 10, []uint32{1 << 30, 1<<30 + 65536, 1<<30 + 2*65536}},
		{"capped", []Range{{1 << 30, 3 * 65536}}, 2, []uint32{1 << 30, 1<<30 + 65536}},
		{"unaligned start skips a partial slot", []Range{{100000, 200000}}, 10, []uint32{131072, 196608}},
		{"too small", []Range{{100000, 65536}}, 10, nil},
		{"top of the id space", []Range{{4294901760 - 65536, 65535 + 65536}}, 10, []uint32{4294901760 - 65536}},
	}
	for _, tc := range tests {
		if got := Slots(tc.ranges, 65536, tc.max); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: Slots = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFreeStart(t *testing.T) {
	uids := Parse([]byte("a:1073741824:65536\nb:1073807360:10\n"))
	gids := Parse([]byte("c:1074000000:100\n"))
	tests := []struct {
		name    string
		files   [][]Entry
		count   uint32
		want    uint32
		wantErr error
	}{
		{"empty", nil, 1 << 26, 1 << 30, nil},
		{"after the taken ones, aligned", [][]Entry{uids}, 65536, 1<<30 + 2*65536, nil},
		{"both files count", [][]Entry{uids, gids}, 1 << 20, 1074003968, nil},
		{"no room", nil, 1<<32 - 1<<29, 0, ErrNoRoom},
	}
	for _, tc := range tests {
		got, err := FreeStart(tc.files, 1<<30, tc.count, 65536)
		if !errors.Is(err, tc.wantErr) || got != tc.want {
			t.Errorf("%s: FreeStart = %d, %v; want %d, %v", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

// FuzzParse: any bytes parse without panicking into entries whose ranges fit the id space, and
// every slot cut from them lies inside them.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "a:1:2\n", "axocoatl:1073741824:67108864\n", "x:4294967294:1", "#c\n::\n", "u:0:4294967295\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		es := Parse(b)
		for _, e := range es {
			if e.Count == 0 || e.End() > 1<<32-1 || e.Owner == "" {
				t.Fatalf("bad entry %+v", e)
			}
		}
		if len(es) == 0 {
			return
		}
		rs := Of(es, es[0].Owner, "")
		for _, s := range Slots(rs, 65536, 1<<20) {
			ok := false
			for _, r := range rs {
				if uint64(s) >= uint64(r.Start) && uint64(s)+65536 <= r.End() {
					ok = true
				}
			}
			if !ok || s%65536 != 0 {
				t.Fatalf("slot %d outside %v", s, rs)
			}
		}
		if st, err := FreeStart([][]Entry{es}, 1<<30, 65536, 65536); err == nil {
			for _, e := range es {
				if uint64(st) < e.End() && uint64(e.Start) < uint64(st)+65536 {
					t.Fatalf("free start %d overlaps %+v", st, e)
				}
			}
		}
	})
}
