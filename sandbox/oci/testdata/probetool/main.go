// probetool is the tool the Oci tests run: a static Go program that does what its input asks
// and reports what happened in /axocoatl/output.json.
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

type input struct {
	Op   string `json:"op"`
	Path string `json:"path"`
	Addr string `json:"addr"`
	Code int    `json:"code"`
	Hang bool   `json:"hang"`
	Msg  string `json:"msg"`
	N    int64  `json:"n"`
	Ms   int    `json:"ms"`
	Max  int    `json:"max"`
}

func write(v any) {
	b, _ := json.Marshal(v)
	if err := os.WriteFile("/axocoatl/output.json", b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "write output:", err)
		os.Exit(3)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func status(field string) string {
	b, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == field {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func main() {
	raw, err := os.ReadFile("/axocoatl/input.json")
	if err != nil {
		fmt.Fprintln(os.Stderr, "read input:", err)
		os.Exit(2)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		fmt.Fprintln(os.Stderr, "bad input:", err)
		os.Exit(2)
	}
	switch in.Op {
	case "echo":
		write(map[string]any{"echo": json.RawMessage(raw)})
	case "whoami":
		host, _ := os.Hostname()
		ifaces, _ := net.Interfaces()
		var names []string
		for _, i := range ifaces {
			names = append(names, i.Name)
		}
		var rl syscall.Rlimit
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
		write(map[string]any{"uid": os.Getuid(), "pid": os.Getpid(), "hostname": host, "ifaces": names,
			"cap_eff": status("CapEff"), "cap_bnd": status("CapBnd"), "no_new_privs": status("NoNewPrivs"),
			"seccomp": status("Seccomp"), "nofile": rl.Cur, "nice": nice(), "uid_map": uidMap()})
	case "sleep":
		time.Sleep(time.Duration(in.Ms) * time.Millisecond)
		write(map[string]any{"uid_map": uidMap()})
	case "inotify":
		// Open up to max inotify instances (stopping at the first error), hold them ms, report.
		n := 0
		var ierr error
		for n < in.Max {
			if _, err := syscall.InotifyInit1(syscall.IN_CLOEXEC); err != nil {
				ierr = err
				break
			}
			n++
		}
		time.Sleep(time.Duration(in.Ms) * time.Millisecond)
		write(map[string]any{"n": n, "error": errString(ierr)})
	case "spin":
		for {
		}
	case "alloc":
		var keep [][]byte
		for {
			b := make([]byte, 16<<20)
			for i := range b {
				b[i] = 1
			}
			keep = append(keep, b)
		}
	case "forkbomb":
		n := 0
		var ferr error
		for n < 10000 {
			cmd := exec.Command("/bin/sleep", "1000")
			if ferr = cmd.Start(); ferr != nil {
				break
			}
			n++
		}
		if in.Hang {
			for {
			}
		}
		write(map[string]any{"forked": n, "error": errString(ferr)})
	case "read":
		_, err := os.ReadFile(in.Path)
		write(map[string]any{"error": errString(err)})
	case "write":
		err := os.WriteFile(in.Path, []byte("pwned"), 0o644)
		write(map[string]any{"error": errString(err)})
	case "dial":
		c, err := net.DialTimeout("tcp", in.Addr, 2*time.Second)
		if c != nil {
			c.Close()
		}
		write(map[string]any{"error": errString(err)})
	case "keyctl":
		// KEYCTL_GET_KEYRING_ID (0) of the session keyring (-3): allowed without seccomp.
		_, _, e := syscall.Syscall(syscall.SYS_KEYCTL, 0, uintptr(0xfffffffd), 0)
		var err error
		if e != 0 {
			err = e
		}
		write(map[string]any{"error": errString(err)})
	case "fill":
		// Write up to n bytes (at most 256 MiB) to path, then remove the file so that output.json
		// fits: how much a file system lets a tool write.
		n, err := fill(in.Path, min(in.N, 256<<20))
		_ = os.Remove(in.Path)
		write(map[string]any{"written": n, "error": errString(err)})
	case "deeptree":
		// Nest n directories below path (relative steps, so no path length limit applies). The
		// output file is made first: the tree may use up the file system's inodes.
		write(nil)
		depth, err := deepTree(in.Path, in.N)
		_ = os.Chdir("/")
		write(map[string]any{"depth": depth, "error": errString(err)})
	case "sockets":
		// socket(2) for each family the seccomp profile allows or refuses: "" when created,
		// else the error.
		res := map[string]string{}
		for name, a := range map[string][3]int{
			"unix": {syscall.AF_UNIX, syscall.SOCK_STREAM, 0}, "inet": {syscall.AF_INET, syscall.SOCK_STREAM, 0},
			"inet6": {syscall.AF_INET6, syscall.SOCK_DGRAM, 0}, "netlink_route": {syscall.AF_NETLINK, syscall.SOCK_RAW, syscall.NETLINK_ROUTE},
			"vsock": {40, syscall.SOCK_STREAM, 0}, "packet": {syscall.AF_PACKET, syscall.SOCK_DGRAM, 0},
			"alg": {syscall.AF_ALG, syscall.SOCK_SEQPACKET, 0}, "netlink_uevent": {syscall.AF_NETLINK, syscall.SOCK_DGRAM, syscall.NETLINK_KOBJECT_UEVENT},
			"netlink_audit": {syscall.AF_NETLINK, syscall.SOCK_RAW, syscall.NETLINK_AUDIT}, "key": {syscall.AF_KEY, syscall.SOCK_RAW, 2},
			"bluetooth": {syscall.AF_BLUETOOTH, syscall.SOCK_RAW, 0}, "tipc": {syscall.AF_TIPC, syscall.SOCK_RDM, 0},
		} {
			fd, err := syscall.Socket(a[0], a[1], a[2])
			if err == nil {
				syscall.Close(fd)
			}
			res[name] = errString(err)
		}
		write(res)
	case "ptrace":
		// PTRACE_TRACEME: allowed without seccomp for any process.
		_, _, e := syscall.RawSyscall(syscall.SYS_PTRACE, syscall.PTRACE_TRACEME, 0, 0)
		var err error
		if e != 0 {
			err = e
		}
		write(map[string]any{"error": errString(err)})
	case "compat":
		// getpid (20 on i386) through the 32-bit ABI: the pid when that ABI is allowed.
		if !hasInt80 {
			write(map[string]any{"skip": "not amd64"})
			break
		}
		r := int80(20)
		write(map[string]any{"pid": os.Getpid(), "compat_getpid": int64(r)})
	case "fail":
		fmt.Fprintln(os.Stderr, in.Msg)
		os.Exit(in.Code)
	case "bigout":
		write(strings.Repeat("x", 2<<20))
	default:
		fmt.Fprintln(os.Stderr, "unknown op", in.Op)
		os.Exit(2)
	}
}

// uidMap is the first line of /proc/self/uid_map: "container-id host-id count".
func uidMap() string {
	b, _ := os.ReadFile("/proc/self/uid_map")
	l, _, _ := strings.Cut(string(b), "\n")
	return strings.Join(strings.Fields(l), " ")
}

// nice is the process's nice value (getpriority's raw result is 20-nice).
func nice() int {
	r, _, errno := syscall.Syscall(syscall.SYS_GETPRIORITY, syscall.PRIO_PROCESS, 0, 0)
	if errno != 0 {
		return -100
	}
	return 20 - int(r)
}

func fill(path string, n int64) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = 'x'
	}
	var done int64
	for done < n {
		k, err := f.Write(buf[:min(int64(len(buf)), n-done)])
		done += int64(k)
		if err != nil {
			return done, err
		}
	}
	return done, f.Sync()
}

func deepTree(path string, n int64) (int64, error) {
	if err := os.Chdir(path); err != nil {
		return 0, err
	}
	for i := int64(0); i < n; i++ {
		if err := syscall.Mkdir("d", 0o755); err != nil {
			return i, err
		}
		if err := syscall.Chdir("d"); err != nil {
			return i, err
		}
	}
	return n, nil
}
