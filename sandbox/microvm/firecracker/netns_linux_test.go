package firecracker

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// tapExists says whether a link named name is in this process's network namespace, as
// Firecracker's open of a tap by name would find it.
func tapExists(name string) bool {
	b, err := os.ReadFile("/proc/self/net/dev")
	if err != nil || name == "" {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if n, _, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(n) == name {
			return true
		}
	}
	return false
}

// joinNetns moves the calling thread into the network namespace at path.
func joinNetns(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}
