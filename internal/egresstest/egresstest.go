// Package egresstest holds the test-only switch of package egress: the fake-internet tests mark
// the documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) public,
// which the deny set refuses otherwise. It is internal, so nothing outside this module can flip
// it, and nothing in the module but tests does.
package egresstest

import "sync/atomic"

var testNetPublic atomic.Int32

// MarkTestNetPublic makes the documentation ranges public for this process until restore is
// called. Calls nest (a counter), so parallel tests may each mark and restore.
func MarkTestNetPublic() (restore func()) {
	testNetPublic.Add(1)
	var once atomic.Bool
	return func() {
		if once.CompareAndSwap(false, true) {
			testNetPublic.Add(-1)
		}
	}
}

// TestNetPublic reports whether a test marked the documentation ranges public.
func TestNetPublic() bool { return testNetPublic.Load() > 0 }
