package nsthread

import (
	"os"
	"testing"

	"github.com/axocoatl/isolation/internal/testutil"
)

// A new namespace is another one than this process's, code run in it sees it, and the thread
// comes back: the next look from this goroutine sees the host's again.
func TestNewAndDo(t *testing.T) {
	testutil.RequiresRoot(t, "creating network namespaces")
	host, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var inSetup string
	ns, err := New(func() error {
		inSetup, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if inSetup == "" || inSetup == host {
		t.Fatalf("setup ran in %q, the host is %q", inSetup, host)
	}
	var inDo string
	if err := Do(int(ns.Fd()), func() error {
		inDo, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inDo != inSetup {
		t.Errorf("Do ran in %q, want the new namespace %q", inDo, inSetup)
	}
	for range 50 { // whatever thread runs this goroutine now is back in the host's namespace
		if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != host {
			t.Fatalf("after Do this goroutine is in %q, want the host's %q", now, host)
		}
	}
}
