package callnet

import (
	"fmt"
	"os"
	"strconv"

	"github.com/axocoatl/isolation/internal/nsthread"
)

// inNetns runs f on an OS thread inside the network namespace ns (see nsthread.Do).
func inNetns(ns int, f func() error) error { return nsthread.Do(ns, f) }

// newNetns creates a network namespace owned by this process's user namespace (so no process in
// a child user namespace, a container's root included, can change its links, addresses, routes or
// sysctls) and returns it as an open file. Inside, before any link but lo exists: IPv6 off for
// links created later (eth0), and no TIME_WAIT sockets. The namespace lives as long as the file
// or a process inside it.
func newNetns() (*os.File, error) { return nsthread.New(setupInside) }

// setupInside sets the sysctls of a new namespace; runs on a thread inside it.
func setupInside() error {
	for _, s := range []struct{ path, val string }{
		{"/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"},
		// A TIME_WAIT socket would outlive the call and show its peers to the namespace's next
		// tool (/proc/net/tcp); without them, a closed connection is gone at once.
		{"/proc/sys/net/ipv4/tcp_max_tw_buckets", "0"},
	} {
		if err := os.WriteFile(s.path, []byte(s.val), 0); err != nil {
			return fmt.Errorf("sysctl %s: %w", s.path, err)
		}
	}
	return nil
}

// setHostSysctls hardens the host side of a pair: no IPv6 (no link-local address, no router
// solicitations), strict reverse-path filtering (a source address not routed via this link is
// dropped), no redirects.
func setHostSysctls(link string) error {
	for _, s := range []struct{ path, val string }{
		{"/proc/sys/net/ipv6/conf/" + link + "/disable_ipv6", "1"},
		{"/proc/sys/net/ipv4/conf/" + link + "/rp_filter", "1"},
		{"/proc/sys/net/ipv4/conf/" + link + "/send_redirects", "0"},
		{"/proc/sys/net/ipv4/conf/" + link + "/accept_local", "0"},
		{"/proc/sys/net/ipv4/conf/" + link + "/route_localnet", "0"},
	} {
		if err := os.WriteFile(s.path, []byte(s.val), 0); err != nil && !os.IsNotExist(err) {
			return fmt.Errorf("sysctl %s: %w", s.path, err)
		}
	}
	return nil
}

// nsPath names an open namespace file for a runtime to join: this process's descriptor of it.
func nsPath(f *os.File) string {
	return "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(f.Fd()))
}

// socketsIn counts the sockets of the namespace ns (TCP, UDP and raw, IPv4 and IPv6, any state)
// by reading its /proc/net tables from a thread inside it.
func socketsIn(ns int) (int, error) {
	n := 0
	err := inNetns(ns, func() error {
		for _, t := range []string{"tcp", "tcp6", "udp", "udp6", "raw", "raw6"} {
			b, err := os.ReadFile("/proc/thread-self/net/" + t)
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				return err
			}
			lines := 0
			for _, c := range b {
				if c == '\n' {
					lines++
				}
			}
			if lines > 1 {
				n += lines - 1 // the header
			}
		}
		return nil
	})
	return n, err
}
