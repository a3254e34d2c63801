package guest

import (
	"net/netip"
	"testing"
)

func TestNetCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    Net
		ok   bool
	}{
		{"a call's /31", Net{Addr: "169.254.64.3", PrefixLen: 31, Gateway: "169.254.64.2", DNS: "169.254.64.2"}, true},
		{"gateway outside the prefix", Net{Addr: "169.254.64.3", PrefixLen: 31, Gateway: "169.254.64.4", DNS: "169.254.64.2"}, false},
		{"gateway is the address", Net{Addr: "169.254.64.3", PrefixLen: 31, Gateway: "169.254.64.3", DNS: "169.254.64.2"}, false},
		{"IPv6 address", Net{Addr: "fe80::1", PrefixLen: 31, Gateway: "fe80::2", DNS: "169.254.64.2"}, false},
		{"IPv4-mapped address", Net{Addr: "::ffff:169.254.64.3", PrefixLen: 31, Gateway: "169.254.64.2", DNS: "169.254.64.2"}, false},
		{"prefix 32", Net{Addr: "169.254.64.3", PrefixLen: 32, Gateway: "169.254.64.2", DNS: "169.254.64.2"}, false},
		{"prefix 0", Net{Addr: "169.254.64.3", PrefixLen: 0, Gateway: "169.254.64.2", DNS: "169.254.64.2"}, false},
		{"no DNS", Net{Addr: "169.254.64.3", PrefixLen: 31, Gateway: "169.254.64.2"}, false},
		{"junk", Net{Addr: "169.254.64.3 up", PrefixLen: 31, Gateway: "169.254.64.2", DNS: "x"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, err := tc.n.Check(); (err == nil) != tc.ok {
				t.Fatalf("Check = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// FuzzNetCheck: whatever the strings, Check never panics, and what it accepts is what Net
// documents: IPv4 addresses, a prefix of 1..31 holding a gateway other than the address.
func FuzzNetCheck(f *testing.F) {
	f.Add("169.254.64.3", 31, "169.254.64.2", "169.254.64.2")
	f.Add("::ffff:1.2.3.4", 24, "1.2.3.1", "1.1.1.1")
	f.Fuzz(func(t *testing.T, addr string, bits int, gw, dns string) {
		a, g, d, err := (&Net{Addr: addr, PrefixLen: bits, Gateway: gw, DNS: dns}).Check()
		if err != nil {
			return
		}
		if !a.Is4() || !g.Is4() || !d.Is4() || bits < 1 || bits > 31 || a == g || !netip.PrefixFrom(a, bits).Contains(g) {
			t.Fatalf("accepted %q/%d via %q dns %q", addr, bits, gw, dns)
		}
	})
}
