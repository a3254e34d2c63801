package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/callio"
	"github.com/axocoatl/isolation/internal/guest"
	"github.com/axocoatl/isolation/sandbox"
)

// The tool runs as nobody: it cannot touch the agent, the root's files or the devices.
const toolUID, toolGID = guest.ToolUID, guest.ToolGID

const (
	toolDir    = "/axocoatl/tool"
	moduleDir  = "/lib/modules/axocoatl"
	agentBuild = "axoiso-guest/1"
	pythonBin  = "/usr/bin/python3"
)

var logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

// bootSpans records this boot's steps for the Ready frame.
var bootSpans guest.BootSpans

// sinceBoot reads CLOCK_BOOTTIME in microseconds.
func sinceBoot() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return ts.Nano() / 1000
}

func run() {
	if len(os.Args) > 1 && os.Args[1] == toolInitArg {
		runToolInit() // a tool on the image drive: never returns
	}
	bootSpans.AgentUS = sinceBoot()
	if err := mountAll(earlyMounts); err != nil {
		logger.Error("setup", "err", err)
	}
	args := cmdline()
	if err := disableIPv6ByDefault(); err != nil {
		logger.Error("ipv6", "err", err)
	}
	if mods := args["axocoatl.modules"]; mods != "" {
		for _, m := range strings.Split(mods, ",") {
			if err := loadModule(m); err != nil {
				logger.Error("module", "name", m, "err", err)
			}
		}
		bootSpans.ModulesUS = sinceBoot()
	}
	if dev := args["axocoatl.root"]; dev != "" {
		if err := switchRoot(dev); err != nil {
			logger.Error("root drive", "dev", dev, "err", err)
			powerOff()
		}
		bootSpans.RootUS = sinceBoot()
	}
	if err := mountAll(lateMounts); err != nil {
		logger.Error("setup", "err", err)
	}
	if args[guest.CmdlineImage] != "" {
		if err := mountImage(); err != nil {
			// Calls on the image then fail (sandbox failed), saying why.
			logger.Error("image drive", "err", err)
		}
	}
	if err := loopbackUp(); err != nil {
		logger.Error("loopback", "err", err)
	}
	ch := args["axocoatl.chan"]
	if ch == "" {
		ch = "ttyS1"
	}
	if err := serve(ch); err != nil {
		logger.Error("agent", "err", err)
	}
	powerOff()
}

// loopbackUp brings lo up, as the Oci tier does for its containers: the VM has no NIC, but tools
// (and libraries such as multiprocessing's managers) may talk to themselves over 127.0.0.1.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

type mountSpec struct{ src, dst, typ, data string }

var (
	// earlyMounts are needed to load modules and find the root drive; switchRoot moves them.
	earlyMounts = []mountSpec{
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"devtmpfs", "/dev", "devtmpfs", ""},
	}
	lateMounts = []mountSpec{
		{"tmpfs", "/tmp", "tmpfs", "mode=1777,size=50%"},
		{"tmpfs", "/axocoatl", "tmpfs", "mode=1777,size=50%"},
	}
)

func mountAll(ms []mountSpec) error {
	var errs []error
	for _, m := range ms {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, unix.MS_NOSUID, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s: %w", m.dst, err))
		}
	}
	return errors.Join(errs...)
}

// switchRoot mounts the read-only ext4 drive /dev/<dev> and makes it the root, as switch_root
// does from an initramfs: the early mounts move along; the initramfs stays (it holds only the
// agent, which keeps running from memory).
func switchRoot(dev string) error {
	if dev == "" || strings.ContainsAny(dev, "/.") {
		return fmt.Errorf("bad root device %q", dev)
	}
	const newRoot = "/newroot"
	src := "/dev/" + dev
	// The block device node appears once virtio_blk has probed the drive.
	var err error
	for i := 0; i < 2000; i++ {
		if err = unix.Mount(src, newRoot, "ext4", unix.MS_RDONLY|unix.MS_NODEV, ""); err == nil {
			break
		}
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENXIO) && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("mount %s: %w", src, err)
		}
		time.Sleep(time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("mount %s: %w", src, err)
	}
	for _, m := range earlyMounts {
		if err := unix.Mount(m.dst, newRoot+m.dst, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", m.dst, err)
		}
	}
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return err
	}
	return unix.Chdir("/")
}

func cmdline() map[string]string {
	b, _ := os.ReadFile("/proc/cmdline")
	out := map[string]string{}
	for _, f := range strings.Fields(string(b)) {
		if k, v, ok := strings.Cut(f, "="); ok && strings.HasPrefix(k, "axocoatl.") {
			out[k] = v
		}
	}
	return out
}

func loadModule(name string) error {
	if name == "" || strings.ContainsAny(name, "/.") {
		return fmt.Errorf("bad module name %q", name)
	}
	f, err := os.Open(filepath.Join(moduleDir, name+".ko"))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), moduleParams(name), 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// moduleParams returns the "<name>.<param>=<value>" arguments of the kernel command line as
// module parameters ("param=value ..."), as modprobe does: the kernel applies them only to
// built-in code. QEMU's microvm without ACPI lists its virtio-mmio devices this way
// (virtio_mmio.device=512@0xfeb00e00:12).
func moduleParams(name string) string {
	b, _ := os.ReadFile("/proc/cmdline")
	norm := func(s string) string { return strings.ReplaceAll(s, "-", "_") }
	var ps []string
	for _, f := range strings.Fields(string(b)) {
		k, _, _ := strings.Cut(f, "=")
		if mod, p, ok := strings.Cut(k, "."); ok && p != "" && norm(mod) == name && !strings.ContainsRune(f, '"') {
			ps = append(ps, strings.TrimPrefix(f, mod+"."))
		}
	}
	return strings.Join(ps, " ")
}

// openChannel opens the host channel and returns it ready for frames.
func openChannel(ch string) (io.ReadWriteCloser, func() (io.ReadWriteCloser, error), error) {
	if port, ok := strings.CutPrefix(ch, "vsock:"); ok {
		p, err := strconv.ParseUint(port, 10, 32)
		if err != nil {
			return nil, nil, fmt.Errorf("bad vsock port %q", port)
		}
		fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, nil, err
		}
		if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: uint32(p)}); err != nil {
			return nil, nil, err
		}
		if err := unix.Listen(fd, 4); err != nil {
			return nil, nil, err
		}
		accept := func() (io.ReadWriteCloser, error) {
			nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
			if err != nil {
				return nil, err
			}
			return os.NewFile(uintptr(nfd), "vsock"), nil
		}
		c, err := accept()
		return c, accept, err
	}
	if strings.ContainsAny(ch, "/.") {
		return nil, nil, fmt.Errorf("bad channel %q", ch)
	}
	dev := "/dev/" + ch
	var f *os.File
	var err error
	// A port can exist before its driver can open it.
	for i := 0; i < 500; i++ {
		f, err = os.OpenFile(dev, os.O_RDWR|unix.O_NOCTTY, 0)
		if err == nil || !(errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV)) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return nil, nil, err
	}
	if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
		// cfmakeraw: no echo, no line discipline, 8 bits.
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CRTSCTS | unix.CBAUD
		// The fastest rate a 16550 divisor allows: QEMU times the receive FIFO's timeout
		// interrupt by the programmed rate (4 character times: ~4 ms at the default 9600 baud),
		// which every partial FIFO of a request waits for.
		t.Cflag |= unix.CS8 | unix.CLOCAL | unix.CREAD | unix.B115200
		t.Ispeed, t.Ospeed = unix.B115200, unix.B115200
		t.Cc[unix.VMIN] = 1
		t.Cc[unix.VTIME] = 0
		if err := unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t); err != nil {
			return nil, nil, fmt.Errorf("raw mode: %w", err)
		}
		_ = unix.IoctlSetInt(int(f.Fd()), unix.TCFLSH, unix.TCIOFLUSH)
	}
	return f, nil, nil
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func serve(ch string) error {
	conn, accept, err := openChannel(ch)
	if err != nil {
		return err
	}
	ready := guest.Ready{Agent: agentBuild, Kernel: kernelRelease()}
	bootSpans.ChannelUS = sinceBoot()
	first := ready
	first.Boot = &bootSpans
	if err := guest.WriteFrame(conn, guest.TypeReady, first); err != nil {
		return err
	}
	tr := &timedReader{r: conn}
	fr := guest.NewReader(tr)
	for {
		t, body, err := fr.Next()
		if err != nil {
			if accept != nil {
				// A vsock peer went away (a snapshot resets every connection): wait for the next.
				conn.Close()
				if conn, err = accept(); err != nil {
					return err
				}
				tr = &timedReader{r: conn}
				fr = guest.NewReader(tr)
				if err := guest.WriteFrame(conn, guest.TypeReady, ready); err != nil {
					return err
				}
				continue
			}
			return err
		}
		switch t {
		case guest.TypeHello:
			tr.reset()
			var h guest.Hello
			if err := json.Unmarshal(body, &h); err != nil {
				return err
			}
			if h.Rehearse {
				if err := rehearse(); err != nil {
					logger.Warn("rehearsal", "err", err)
				}
			}
			if h.RehearseImage && imageMounted {
				if err := rehearseImage(); err != nil {
					logger.Warn("image rehearsal", "err", err)
				}
			}
			if h.Warm {
				warm()
			}
			if h.Net != nil {
				if err := configureNetOnce(h.Net); err != nil {
					// The call's request configures it again, and fails saying why.
					logger.Warn("network", "err", err)
				}
			}
			r := ready
			r.Nonce = h.Nonce
			if err := guest.WriteFrame(conn, guest.TypeReady, r); err != nil {
				return err
			}
		case guest.TypeRequest:
			recv := tr.last.Sub(tr.first)
			t0 := time.Now()
			var req guest.Request
			resp := guest.Response{}
			if err := json.Unmarshal(body, &req); err != nil {
				resp.Error = "bad request: " + err.Error()
			} else {
				decoded := time.Since(t0)
				resp = handle(req)
				if resp.Spans == nil {
					resp.Spans = &guest.Spans{}
				}
				resp.Spans.RecvUS, resp.Spans.DecodeUS = recv.Microseconds(), decoded.Microseconds()
			}
			err := guest.WriteFrame(conn, guest.TypeResponse, resp)
			if f, ok := conn.(*os.File); ok {
				_ = unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1) // tcdrain
			}
			return err
		default:
			return fmt.Errorf("unexpected frame %c", t)
		}
	}
}

// timedReader notes when reads return, so that the agent can tell how long a request took to
// arrive (from its first bytes to its last): the channel's throughput, not the host's idle time.
type timedReader struct {
	r           io.Reader
	first, last time.Time
}

func (t *timedReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	now := time.Now()
	if t.first.IsZero() {
		t.first = now
	}
	t.last = now
	return n, err
}

// reset starts a new measurement at the next read.
func (t *timedReader) reset() { t.first = time.Time{} }

// rehearsalScript exercises what a shell tool typically does: read the input, fork a command,
// write the output.
const rehearsalScript = "read -r l < /axocoatl/input.json\nprintf '{\"r\":%s,\"h\":\"%s\"}' \"$l\" \"$(hostname)\" > /axocoatl/output.json\necho rehearsal >&2\n"

// rehearse runs one throw-away shell call through the same path as a real one (JSON decoding of
// a request frame, handle, JSON encoding of the response), then removes what it wrote, so that
// the real call finds the state a fresh VM has.
func rehearse() error {
	var frame bytes.Buffer
	req := guest.Request{ID: "rehearsal", Runtime: guest.RuntimeShell, Entrypoint: "main.sh",
		Files:     []guest.File{{Path: "main.sh", Mode: 0o644, Data: []byte(rehearsalScript)}},
		Input:     []byte(`{"rehearsal":true}`),
		TimeoutMS: 10000, MaxOutputBytes: 1 << 20, MaxStderrBytes: 4096}
	if err := guest.WriteFrame(&frame, guest.TypeRequest, req); err != nil {
		return err
	}
	_, body, err := guest.NewReader(&frame).Next()
	if err != nil {
		return err
	}
	var got guest.Request
	if err := json.Unmarshal(body, &got); err != nil {
		return err
	}
	var u unix.Utsname
	_ = unix.Uname(&u)
	defer unix.Sethostname([]byte(unix.ByteSliceToString(u.Nodename[:])))
	resp := handle(got)
	if err := guest.WriteFrame(io.Discard, guest.TypeResponse, resp); err != nil {
		return err
	}
	var errs []error
	for _, p := range []string{toolDir, sandbox.GuestInputPath, sandbox.GuestOutputPath} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	switch {
	case resp.Error != "":
		errs = append(errs, errors.New(resp.Error))
	case resp.ExitCode != 0 || !resp.HasOutput:
		errs = append(errs, fmt.Errorf("rehearsal exited %d, output %v: %s", resp.ExitCode, resp.HasOutput, resp.Stderr))
	}
	return errors.Join(errs...)
}

// warm runs the interpreter once as the tool user, so that its code is translated and its files
// are cached before a tool needs them. Failures only cost the speed-up.
func warm() {
	if _, err := os.Stat(pythonBin); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pythonBin, "-E", "-s", "-B", "-c", "import json, os, sys")
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: toolUID, Gid: toolGID, Groups: []uint32{}},
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Run(); err != nil {
		logger.Warn("warm-up", "err", err)
	}
}

func handle(req guest.Request) guest.Response {
	t0 := time.Now()
	if err := reseed(req.Entropy); err != nil {
		return guest.Response{Error: "reseed: " + err.Error()}
	}
	if host := sanitizeHostname(req.ID); host != "" {
		_ = unix.Sethostname([]byte(host))
	}
	if req.Net != nil {
		if err := configureNetOnce(req.Net); err != nil {
			return guest.Response{Error: err.Error()}
		}
	}
	if err := writeTool(req); err != nil {
		return guest.Response{Error: err.Error()}
	}
	prep := time.Since(t0)
	resp := runTool(req)
	if resp.Spans != nil {
		resp.Spans.PrepUS = prep.Microseconds()
	}
	return resp
}

func sanitizeHostname(id string) string {
	var b strings.Builder
	for _, r := range id {
		if b.Len() >= 63 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// reseed mixes the host's bytes into the input pool, credits them and forces a CRNG reseed, so
// that clones of one snapshot stop sharing random state.
func reseed(entropy []byte) error {
	if len(entropy) == 0 {
		return nil
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(entropy))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(8 * len(entropy))
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(entropy))
	copy(buf[8:], entropy)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}

// checkRel accepts a slash-separated relative path without "..", empty or absolute parts.
func checkRel(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../") || strings.ContainsRune(p, 0) {
		return fmt.Errorf("bad tool file path %q", p)
	}
	return nil
}

func writeTool(req guest.Request) error {
	if req.Runtime != guest.RuntimeImage {
		if err := os.MkdirAll(toolDir, 0o755); err != nil {
			return err
		}
	}
	for _, f := range req.Files {
		if err := checkRel(f.Path); err != nil {
			return err
		}
		dst := filepath.Join(toolDir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		// The host sent the tool's own access to the file (read, maybe execute); never write.
		mode := os.FileMode(f.Mode) & 0o555
		if err := os.WriteFile(dst, f.Data, mode); err != nil {
			return err
		}
		if err := os.Chmod(dst, mode); err != nil {
			return err
		}
	}
	if err := os.WriteFile(sandbox.GuestInputPath, req.Input, 0o444); err != nil {
		return err
	}
	return os.Chmod(sandbox.GuestInputPath, 0o444)
}

func oomKills() int64 {
	b, _ := os.ReadFile("/proc/vmstat")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func runTool(req guest.Request) guest.Response {
	if req.Runtime != guest.RuntimeImage {
		if err := checkRel(req.Entrypoint); err != nil {
			return guest.Response{Error: err.Error()}
		}
	}
	entry := filepath.Join(toolDir, filepath.FromSlash(req.Entrypoint))
	var argv []string
	switch req.Runtime {
	case guest.RuntimePython:
		// -E: no PYTHON* variables; -s: no user site dir; -B: nothing to write (the stdlib comes
		// precompiled, the tool's own files are compiled in memory).
		argv = []string{pythonBin, "-E", "-s", "-B", entry}
	case guest.RuntimeShell:
		argv = []string{"/bin/sh", entry}
	case guest.RuntimeArbitrary:
		argv = []string{entry}
	case guest.RuntimeImage:
	default:
		return guest.Response{Error: fmt.Sprintf("unknown runtime %q", req.Runtime)}
	}
	if req.Image != nil {
		// On the image drive: the tool init sets the tool up and executes Image.Args.
		var err error
		if argv, err = imageCommand(req); err != nil {
			return guest.Response{Error: err.Error()}
		}
	} else if req.Runtime == guest.RuntimeImage {
		return guest.Response{Error: "runtime image without an image"}
	}
	maxErr := req.MaxStderrBytes
	if maxErr <= 0 {
		maxErr = sandbox.DefaultMaxStderrBytes
	}
	maxOut := req.MaxOutputBytes
	if maxOut <= 0 {
		maxOut = sandbox.DefaultMaxOutputBytes
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = sandbox.DefaultTimeout
	}
	tail := callio.NewTailBuffer(maxErr)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = toolDir
	cmd.Env = sandbox.MergeEnv([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "LANG=C.UTF-8"}, checkedEnv(req.Env))
	cmd.Stdin = nil
	// Our own pipes, not io.Writers: exec's Wait would wait for a pipe's EOF, which never comes
	// while a process the tool left behind keeps it open. The tool's exit decides; the pipes are
	// drained afterwards, boundedly. stdout and stderr are kept apart.
	stdout := callio.NewTailBuffer(maxErr)
	var pipes [2]struct{ r, w *os.File }
	for i := range pipes {
		var err error
		if pipes[i].r, pipes[i].w, err = os.Pipe(); err != nil {
			for _, p := range pipes[:i] {
				p.r.Close()
				p.w.Close()
			}
			return guest.Response{Error: "pipe: " + err.Error(), ExitCode: -1}
		}
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		done := make(chan struct{})
		go func() { _, _ = io.Copy(stdout, pipes[0].r); close(done) }()
		_, _ = io.Copy(tail, pipes[1].r)
		<-done
	}()
	cmd.Stdout = pipes[0].w
	cmd.Stderr = pipes[1].w
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: toolUID, Gid: toolGID, Groups: []uint32{}},
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
	}
	// The tool init's error pipe (image tools): what failed before the tool started.
	var initErr *os.File
	if req.Image != nil {
		cmd.Dir, cmd.Env = "/", nil
		cmd.SysProcAttr = imageSysProcAttr()
		var iw *os.File
		var err error
		if initErr, iw, err = os.Pipe(); err != nil {
			for _, p := range pipes {
				p.r.Close()
				p.w.Close()
			}
			<-drained
			return guest.Response{Error: "pipe: " + err.Error(), ExitCode: -1}
		}
		defer initErr.Close()
		defer iw.Close()
		cmd.ExtraFiles = []*os.File{iw}
	}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	cmd.WaitDelay = time.Second
	ooms := oomKills()
	started := time.Now()
	err := cmd.Start()
	pipes[0].w.Close()
	pipes[1].w.Close()
	if len(cmd.ExtraFiles) > 0 {
		cmd.ExtraFiles[0].Close()
	}
	if err == nil {
		err = cmd.Wait()
	}
	ran := time.Since(started)
	collect := time.Now()
	// Whatever the tool left behind: its process group, then every process of the tool's uid
	// (a grandchild may have left the group with setsid). Then the pipe's writers are gone.
	if cmd.Process != nil {
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	}
	if kerr := killToolUser(); kerr != nil {
		logger.Warn("kill the tool's processes", "err", kerr)
	}
	select {
	case <-drained:
	case <-time.After(drainGrace):
		// A writer survived the kill: stop reading, keep what arrived.
		pipes[0].r.Close()
		pipes[1].r.Close()
		<-drained
	}
	pipes[0].r.Close()
	pipes[1].r.Close()
	resp := guest.Response{RunMS: ran.Milliseconds()}
	if initErr != nil {
		// Written only when the tool init failed; the tool itself never has the pipe.
		if b, _ := io.ReadAll(io.LimitReader(initErr, 4096)); len(b) > 0 {
			resp.Error = "tool init: " + string(b)
			resp.Stderr = tail.String()
			resp.ExitCode = -1
			return resp
		}
	}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		resp.TimedOut = true
		resp.ExitCode = -1
	case errors.As(err, &ee):
		resp.ExitCode = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			resp.ExitCode = 128 + int(ws.Signal())
		}
	case err != nil:
		resp.Error = "start: " + err.Error()
		resp.ExitCode = -1
	}
	if oomKills() > ooms {
		resp.OOMKilled = true
	}
	resp.Stderr, resp.Stdout = tail.String(), stdout.String()
	out, oerr := callio.ReadOutputFile(sandbox.GuestOutputPath, maxOut)
	switch {
	case errors.Is(oerr, isolation.ErrOutputTooLarge):
		resp.OutputTooLarge = true
	case oerr != nil:
		resp.OutputInvalid = oerr.Error()
	case out != nil:
		resp.Output = bytes.Clone(out)
		resp.HasOutput = true
	}
	resp.Spans = &guest.Spans{RunUS: ran.Microseconds(), CollectUS: time.Since(collect).Microseconds()}
	return resp
}

// drainGrace bounds the wait for the tool's stdout and stderr pipes to reach EOF after the tool
// exited and its processes were killed.
const drainGrace = 500 * time.Millisecond

// killToolUser sends SIGKILL to every process running as the tool's uid, wherever its process
// group: kill(-1) from a thread whose credentials are the tool's, so the kernel's own permission
// check selects exactly the tool's processes (and never the agent, pid 1), in one pass that a
// forking process cannot outrun. The thread drops root for good (setresuid applies to the calling
// thread only when issued as a raw system call) and is never unlocked, so the runtime ends it.
func killToolUser() error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, toolGID, toolGID, toolGID); e != 0 {
			errc <- fmt.Errorf("setresgid: %w", e)
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, toolUID, toolUID, toolUID); e != 0 {
			errc <- fmt.Errorf("setresuid: %w", e)
			return
		}
		if err := unix.Kill(-1, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			errc <- err
			return
		}
		errc <- nil
	}()
	return <-errc
}

func powerOff() {
	unix.Sync()
	// QEMU runs with -no-reboot and Firecracker exits on a guest reset: a restart ends the VMM.
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	for {
		time.Sleep(time.Hour)
	}
}

// checkedEnv keeps the NAME=value entries of a request's env that exec can pass (a name, no NUL):
// the host checked them; this keeps a bad frame from failing the tool's start.
func checkedEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if ok && k != "" && !strings.ContainsRune(kv, 0) {
			out = append(out, kv)
		}
	}
	return out
}
