package microvm_test

import (
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox/microvm"
	"github.com/axocoatl/isolation/sandbox/sandboxtest"
)

// TestConformance runs the lifecycle suite against the QEMU driver (cold VMs; TCG here).
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a dozen VMs")
	}
	sandboxtest.Run(t, func(t *testing.T) sandboxtest.Subject {
		s := newSandbox(t, microvm.Config{})
		adir, aentry := tool(t, "answer.sh", "#!/bin/sh\ncat /axocoatl/input.json > /axocoatl/output.json\n", 0o755)
		hdir, hentry := tool(t, "hang.sh", "#!/bin/sh\nwhile :; do :; done\n", 0o755)
		pdir, pentry := tool(t, "print.sh", "#!/bin/sh\necho '"+sandboxtest.PrintStdout+"'\necho '"+sandboxtest.PrintStderr+"' >&2\necho '{}' > /axocoatl/output.json\n", 0o755)
		return sandboxtest.Subject{
			Sandbox: s,
			Answer:  call("conf-answer", isolation.RequireShell, adir, aentry, `{}`, 60*time.Second),
			Hang:    call("conf-hang", isolation.RequireShell, hdir, hentry, `{}`, 60*time.Second),
			Print:   call("conf-print", isolation.RequireShell, pdir, pentry, `{}`, 60*time.Second),
			Leftovers: func() []string {
				if l := leftovers(); l != "" {
					return strings.Split(l, ", ")
				}
				return nil
			},
			Slack:       10 * time.Second,
			Concurrency: 2,
		}
	})
}
