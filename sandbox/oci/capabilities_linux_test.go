package oci

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/axocoatl/isolation/internal/testutil"
)

func TestCapabilitiesMissingFrom(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status string
		want   []string
	}{
		{"root, all", "Name:\tx\nCapEff:\t000001ffffffffff\n", nil},
		{"no CAP_KILL", "CapEff:\t000001ffffffffdf\n", []string{"CAP_KILL"}},
		{"none", "CapInh:\t0000000000000000\nCapEff:\t0000000000000000\n", []string{"CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SYS_ADMIN"}},
		{"no CapEff line", "Name:\tx\n", nil},
		{"garbage", "CapEff:\tzz\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := capabilitiesMissingFrom([]byte(tc.status)); !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestProbeRefusesWithoutCapKill: a root daemon whose bounding set lacks CAP_KILL (a hardened
// service unit that dropped it) made containers whose processes it could not kill, so a call
// past its timeout hung. The tier now reports itself unavailable, naming the capability. The
// probe runs in a child of this test started by setpriv with CAP_KILL out of its bounding set.
func TestProbeRefusesWithoutCapKill(t *testing.T) {
	if os.Getenv("AXOCOATL_PROBE_CHILD") == "1" {
		s, err := New(Config{StateRoot: t.TempDir(), BundleRoot: t.TempDir(), CgroupParent: "axocoatl-captest"})
		if err != nil {
			fmt.Println("NEW-ERROR", err)
			return
		}
		defer s.Close()
		a := s.Probe(context.Background())
		fmt.Printf("AVAILABLE=%v REASON=%s\n", a.Available, a.Reason)
		return
	}
	testutil.RequiresRoot(t, "a root daemon's capabilities")
	setpriv := testutil.RequiresBinary(t, "setpriv", "util-linux")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(setpriv, append(args, "--", os.Args[0], "-test.run=^TestProbeRefusesWithoutCapKill$", "-test.count=1")...)
		cmd.Env = append(os.Environ(), "AXOCOATL_PROBE_CHILD=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
		}
		return string(out)
	}
	without := run("--bounding-set=-kill")
	if !strings.Contains(without, "AVAILABLE=false") || !strings.Contains(without, "CAP_KILL") {
		t.Errorf("without CAP_KILL the probe said:\n%s", without)
	}
	// The same child with its capabilities intact: the refusal is the capability's doing.
	with := run("--bounding-set=+kill")
	if strings.Contains(with, "CAP_KILL") {
		t.Errorf("with CAP_KILL the probe still named it:\n%s", with)
	}
}
