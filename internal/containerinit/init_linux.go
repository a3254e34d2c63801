// Package containerinit turns the running binary into libcontainer's container init when (and
// only when) libcontainer re-executed it for that purpose.
//
// libcontainer starts a container by re-executing /proc/self/exe with the argument "init" and the
// environment variable _LIBCONTAINER_INITPIPE set; the C constructor of libcontainer/nsenter has
// already joined or created the namespaces before the Go runtime starts. Package sandbox/oci
// blank-imports this package, so every binary that links the Oci tier (cmd/axoiso, a program
// built on package axoiso, the test binaries of packages that run containers) has its init(),
// which takes over that re-executed process.
//
// In any other process the package does nothing: both the argument and the environment variable
// must be present, so a CLI subcommand named "init" is not affected.
package containerinit

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// The cgroup device filter implementation; libcontainer needs it registered to apply the
	// container's device rules.
	_ "github.com/opencontainers/cgroups/devices"
	// The C constructor that sets up namespaces before the Go runtime starts in the init process.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

// IsInit reports whether this process was started by libcontainer as a container init.
func IsInit() bool {
	return len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != ""
}

func init() {
	if IsInit() {
		// Init never returns: it execs the container's process or exits non-zero.
		libcontainer.Init()
	}
}
