package main

// Tools on an image drive: a container image's process, or a script tool on a base image. The
// drive (guest.ImageLabel) is mounted read-only, nodev, nosuid at imageDir; each call runs a
// child of the agent in new mount, PID, IPC and UTS namespaces that is this same binary in its
// "tool init" role (toolInitArg): it builds the tool's root over the drive as the Oci tier builds
// a container's (/proc, a small /dev, /dev/shm, /tmp, /axocoatl), pivots into it, drops every
// capability, sets no_new_privs, takes the tool's credentials and executes the tool, which is
// then PID 1 of its namespace: when it exits, the kernel kills whatever it left.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation/internal/guest"
	"github.com/axocoatl/isolation/sandbox"
)

const (
	// imageDir is where the agent mounts the image drive: under its own /tmp, which a tool on
	// the image never sees.
	imageDir = "/tmp/.axocoatl-image"
	// toolInitArg is argv[1] of the tool init; argv[2] is its JSON (toolInit).
	toolInitArg = "axocoatl-tool-init"
	// toolInitFD is the tool init's error pipe: what failed before the tool started.
	toolInitFD = 3
	// defaultTmpMB sizes an image tool's /tmp, as the Oci tier's default.
	defaultTmpMB = 64
	// hostname of an image tool, as in the Oci tier.
	imageHostname = "axocoatl"
)

// toolInit is what the tool init is told.
type toolInit struct {
	guest.Image
	// ToolDir binds the tool folder read-only at /axocoatl/tool (script tools).
	ToolDir bool `json:"tool_dir"`
	// ResolvConf binds the call's resolv.conf over the image's /etc/resolv.conf, when the image
	// has one as a regular file (the call has a network policy).
	ResolvConf bool `json:"resolv_conf,omitempty"`
}

func init() {
	if len(os.Args) > 1 && os.Args[1] == toolInitArg {
		// Credentials, capabilities and no_new_privs are set on this thread and the tool is
		// executed from it: keep the main goroutine on it.
		runtime.LockOSThread()
	}
}

// imageMounted is set once the image drive is mounted.
var imageMounted bool

// mountImage finds the drive labelled guest.ImageLabel and mounts it at imageDir.
func mountImage() error {
	var dev string
	var err error
	// The drive's node appears once virtio_blk has probed it.
	for i := 0; i < 2000; i++ {
		if dev, err = findLabel(guest.ImageLabel); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err != nil {
		return err
	}
	if err := os.MkdirAll(imageDir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dev, imageDir, "ext4", unix.MS_RDONLY|unix.MS_NODEV|unix.MS_NOSUID, "noload"); err != nil {
		return fmt.Errorf("mount %s: %w", dev, err)
	}
	imageMounted = true
	return nil
}

// findLabel returns the /dev node of the virtio disk whose ext4 label is label.
func findLabel(label string) (string, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "vd") || strings.ContainsAny(n, "/.") {
			continue
		}
		if ext4Label("/dev/"+n) == label {
			return "/dev/" + n, nil
		}
	}
	return "", fmt.Errorf("no drive labelled %q", label)
}

// ext4Label reads an ext4 superblock's volume name ("" when dev holds none).
func ext4Label(dev string) string {
	f, err := os.Open(dev)
	if err != nil {
		return ""
	}
	defer f.Close()
	var sb [1024]byte
	if _, err := f.ReadAt(sb[:], 1024); err != nil {
		return ""
	}
	if sb[56] != 0x53 || sb[57] != 0xef { // s_magic
		return ""
	}
	name := sb[120:136] // s_volume_name
	if i := strings.IndexByte(string(name), 0); i >= 0 {
		name = name[:i]
	}
	return string(name)
}

// imageCommand is the argv of the tool init for req, which runs on the image.
func imageCommand(req guest.Request) ([]string, error) {
	if !imageMounted {
		return nil, errors.New("the request runs on an image, and this VM has no image drive")
	}
	im := req.Image
	if len(im.Args) == 0 {
		return nil, errors.New("image process has no args")
	}
	ti := toolInit{Image: *im, ToolDir: req.Runtime != guest.RuntimeImage, ResolvConf: req.Net != nil}
	b, err := json.Marshal(ti)
	if err != nil {
		return nil, err
	}
	return []string{"/proc/self/exe", toolInitArg, string(b)}, nil
}

// imageSysProcAttr is the tool init's: new namespaces, its own process group, killed with the
// agent. It starts as root: it drops everything itself before the tool runs.
func imageSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{
		Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS,
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
}

// runToolInit is the tool init's whole life: set up, then exec the tool. It never returns.
func runToolInit() {
	unix.CloseOnExec(toolInitFD)
	fail := func(step string, err error) {
		msg := fmt.Sprintf("%s: %v", step, err)
		_, _ = unix.Write(toolInitFD, []byte(msg))
		os.Exit(125)
	}
	if len(os.Args) != 3 {
		fail("tool init", errors.New("bad arguments"))
	}
	var ti toolInit
	if err := json.Unmarshal([]byte(os.Args[2]), &ti); err != nil {
		fail("tool init", err)
	}
	lastCap := capLast()
	if err := buildRoot(ti); err != nil {
		fail("root", err)
	}
	if err := unix.Sethostname([]byte(imageHostname)); err != nil {
		fail("hostname", err)
	}
	env := ti.Env
	argv0, err := lookPath(ti.Args[0], env)
	if err != nil {
		fail("exec", err)
	}
	if err := unix.Chdir(ti.Cwd); err != nil {
		fail("cwd", fmt.Errorf("%q: %w", ti.Cwd, err))
	}
	if err := dropPrivileges(ti.UID, ti.GID, ti.AdditionalGIDs, lastCap); err != nil {
		fail("credentials", err)
	}
	err = unix.Exec(argv0, ti.Args, env)
	fail("exec", fmt.Errorf("%q: %w", ti.Args[0], err))
}

// buildRoot makes imageDir the root of this mount namespace, with the tool's mounts.
func buildRoot(ti toolInit) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	rootFD, err := unix.Open(imageDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(rootFD)
	tmpMB := ti.TmpSizeMB
	if tmpMB <= 0 {
		tmpMB = defaultTmpMB
	}
	// As ocispec mounts a container's: no /sys, no /dev/pts, no /dev/mqueue.
	mounts := []struct {
		dst, typ, src string
		flags         uintptr
		data          string
	}{
		{"proc", "proc", "proc", unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_NODEV, ""},
		{"dev", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NOEXEC | unix.MS_STRICTATIME, "mode=755,size=64k"},
		{"tmp", "tmpfs", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777,size=" + strconv.Itoa(tmpMB) + "m"},
	}
	for _, m := range mounts {
		if err := mountIn(rootFD, m.dst, m.src, m.typ, m.flags, m.data); err != nil {
			return err
		}
	}
	if err := populateDev(rootFD); err != nil {
		return err
	}
	if err := mountIn(rootFD, "dev/shm", "shm", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, "mode=1777,size=65536k"); err != nil {
		return err
	}
	// /axocoatl: the agent's I/O dir; input.json read-only; the tool folder read-only (and
	// executable: an Arbitrary tool runs from it).
	binds := []struct {
		src, dst string
		flags    uintptr
	}{
		{sandbox.GuestDir, "axocoatl", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{sandbox.GuestInputPath, "axocoatl/input.json", unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	}
	if ti.ToolDir {
		binds = append(binds, struct {
			src, dst string
			flags    uintptr
		}{toolDir, "axocoatl/tool", unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV})
	}
	for _, b := range binds {
		if err := bindIn(rootFD, b.src, b.dst, b.flags); err != nil {
			return err
		}
	}
	if ti.ResolvConf {
		// Only over a regular file of the image's own (a symlink, e.g. to systemd-resolved's,
		// is left alone: the tool then has no resolver, and still no other way out).
		if fd, err := openIn(rootFD, "etc/resolv.conf", unix.O_PATH|unix.O_NOFOLLOW); err == nil {
			var st unix.Stat_t
			regular := unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG
			unix.Close(fd)
			if regular {
				if err := bindIn(rootFD, resolvConf, "etc/resolv.conf", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC); err != nil {
					return err
				}
			}
		}
	}
	if err := maskProc(rootFD); err != nil {
		return err
	}
	if err := unix.Fchdir(rootFD); err != nil {
		return err
	}
	// pivot_root(".", "."): the old root ends up stacked on the new one, and is detached.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	return unix.Chdir("/")
}

// openIn opens rel inside the root (symlinks resolved as if rootFD were /, never above it).
func openIn(rootFD int, rel string, flags uint64) (int, error) {
	fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{Flags: flags | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return -1, fmt.Errorf("%s: %w", rel, err)
	}
	return fd, nil
}

// mountIn mounts a file system at rel inside the root. The target is opened first (confined)
// and mounted on through its descriptor, so a symlink in the image cannot move the mount out of
// the root.
func mountIn(rootFD int, rel, src, typ string, flags uintptr, data string) error {
	fd, err := openIn(rootFD, rel, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("mount point %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Mount(src, fdPath(fd), typ, flags, data); err != nil {
		return fmt.Errorf("mount %s: %w", rel, err)
	}
	return nil
}

// bindIn binds src (an agent path) at rel inside the root with flags (a read-only, nosuid...
// remount of the bind).
func bindIn(rootFD int, src, rel string, flags uintptr) error {
	fd, err := openIn(rootFD, rel, unix.O_PATH)
	if err != nil {
		return fmt.Errorf("bind target %w", err)
	}
	defer unix.Close(fd)
	p := fdPath(fd)
	if err := unix.Mount(src, p, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", rel, err)
	}
	// The remount applies to the new bind, which is now what the descriptor's path names.
	fd2, err := openIn(rootFD, rel, unix.O_PATH)
	if err != nil {
		return err
	}
	defer unix.Close(fd2)
	if err := unix.Mount("", fdPath(fd2), "", unix.MS_BIND|unix.MS_REMOUNT|flags, ""); err != nil {
		return fmt.Errorf("remount %s: %w", rel, err)
	}
	return nil
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// populateDev creates the standard device nodes and links in the root's fresh /dev tmpfs.
func populateDev(rootFD int) error {
	dfd, err := openIn(rootFD, "dev", unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	old := unix.Umask(0)
	defer unix.Umask(old)
	for _, d := range []struct {
		name         string
		major, minor uint32
	}{{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}} {
		if err := unix.Mknodat(dfd, d.name, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("mknod /dev/%s: %w", d.name, err)
		}
	}
	for _, l := range [][2]string{{"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}} {
		if err := unix.Symlinkat(l[0], dfd, l[1]); err != nil {
			return fmt.Errorf("symlink /dev/%s: %w", l[1], err)
		}
	}
	if err := unix.Mkdirat(dfd, "shm", 0o1777); err != nil {
		return fmt.Errorf("mkdir /dev/shm: %w", err)
	}
	return nil
}

// maskProc hides and write-protects the /proc paths the Oci tier does (ocispec's MaskedPaths and
// ReadonlyPaths): a tool whose uid is 0 could otherwise write /proc/sys.
func maskProc(rootFD int) error {
	for _, p := range []string{"proc/bus", "proc/fs", "proc/irq", "proc/sys", "proc/sysrq-trigger"} {
		fd, err := openIn(rootFD, p, unix.O_PATH)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return err
		}
		pp := fdPath(fd)
		err = unix.Mount(pp, pp, "", unix.MS_BIND|unix.MS_REC, "")
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("bind %s: %w", p, err)
		}
		fd, err = openIn(rootFD, p, unix.O_PATH)
		if err != nil {
			return err
		}
		err = unix.Mount("", fdPath(fd), "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("read-only %s: %w", p, err)
		}
	}
	for _, p := range []string{"proc/acpi", "proc/asound", "proc/kcore", "proc/keys", "proc/latency_stats",
		"proc/timer_list", "proc/timer_stats", "proc/sched_debug", "proc/scsi"} {
		fd, err := openIn(rootFD, p, unix.O_PATH)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = unix.Mount("tmpfs", fdPath(fd), "tmpfs", unix.MS_RDONLY, "size=0")
		} else {
			err = unix.Mount("/dev/null", fdPath(fd), "", unix.MS_BIND, "")
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
	}
	return nil
}

// lookPath finds a command without '/' in env's PATH inside the (new) root, as execvp does.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	pathEnv := "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, dir := range strings.Split(pathEnv, ":") {
		if dir == "" {
			dir = "."
		}
		p := path.Join(dir, file)
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q: not found in PATH %q", file, pathEnv)
}

// capLast is the highest capability number this kernel knows.
func capLast() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 63
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 63
	}
	return n
}

// dropPrivileges sets no_new_privs, empties the bounding set, takes the tool's credentials and
// clears every capability set, on this (locked) thread, which then executes the tool: an
// execution by uid 0 with an empty bounding set grants no capability either.
func dropPrivileges(uid, gid uint32, groups []uint32, lastCap int) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	for c := 0; c <= lastCap; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("drop capability %d: %w", c, err)
		}
	}
	gs := make([]uint32, len(groups))
	copy(gs, groups)
	var gp uintptr
	if len(gs) > 0 {
		gp = uintptr(unsafe.Pointer(&gs[0]))
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(gs)), gp, 0); e != 0 {
		return fmt.Errorf("setgroups: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
		return fmt.Errorf("setresgid: %w", e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
		return fmt.Errorf("setresuid: %w", e)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// rehearsalMissing is what the image rehearsal asks the tool init to execute: a path no image
// is expected to have, so that nothing of the image runs.
const rehearsalMissing = "/.axocoatl-rehearsal-does-not-exist"

// rehearseImage runs the tool init once as a real call on the image would (namespaces, mounts,
// pivot, credentials) up to the exec of a path that does not exist, then removes what the call
// wrote, so that the real call finds the state a fresh VM has.
func rehearseImage() error {
	req := guest.Request{ID: "rehearsal", Runtime: guest.RuntimeImage, Input: []byte(`{}`),
		Image:     &guest.Image{Args: []string{rehearsalMissing}, Env: []string{"PATH=/bin"}, Cwd: "/", UID: toolUID, GID: toolGID},
		TimeoutMS: 10000, MaxOutputBytes: 1 << 20, MaxStderrBytes: 4096}
	var u unix.Utsname
	_ = unix.Uname(&u)
	defer unix.Sethostname([]byte(unix.ByteSliceToString(u.Nodename[:])))
	resp := handle(req)
	var errs []error
	for _, p := range []string{sandbox.GuestInputPath, sandbox.GuestOutputPath} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	if !strings.Contains(resp.Error, rehearsalMissing) {
		errs = append(errs, fmt.Errorf("image rehearsal: want the exec to fail, got %q (exit %d, %q)", resp.Error, resp.ExitCode, resp.Stderr))
	}
	return errors.Join(errs...)
}
