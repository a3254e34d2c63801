package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/axocoatl/isolation/sandbox/microvm/firecracker/internal/fcapi"

	"github.com/axocoatl/isolation/internal/spawn"
)

// maxUnixPath is the longest socket path bind(2) accepts (sun_path is 108 bytes with the NUL).
const maxUnixPath = 107

// validInstanceID is Firecracker's and the jailer's rule for instance ids.
func validInstanceID(id string) bool { return fcapi.ValidID(id, '-') }

// Jailer runs Firecracker through the jailer (chroot, uid/gid drop, cgroups). Paths must be
// absolute and clean; ExecFile's base name must contain "firecracker" (a jailer rule).
type Jailer struct {
	// Binary is the jailer executable; "" looks up "jailer" in PATH.
	Binary string
	// ExecFile is the firecracker binary the jailer execs.
	ExecFile string
	// UID and GID the VMM drops to.
	UID, GID int
	// ChrootBaseDir is the jailer's --chroot-base-dir (the jailer's default is /srv/jailer).
	ChrootBaseDir string
}

func (j *Jailer) validate() error {
	for name, p := range map[string]string{"exec file": j.ExecFile, "chroot base dir": j.ChrootBaseDir} {
		if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return fmt.Errorf("firecracker jailer: %s %q is not an absolute clean path", name, p)
		}
	}
	if j.Binary != "" && (!filepath.IsAbs(j.Binary) || filepath.Clean(j.Binary) != j.Binary) {
		return fmt.Errorf("firecracker jailer: binary %q is not an absolute clean path", j.Binary)
	}
	if !strings.Contains(filepath.Base(j.ExecFile), "firecracker") {
		return fmt.Errorf("firecracker jailer: exec file name %q must contain \"firecracker\"", filepath.Base(j.ExecFile))
	}
	if j.UID < 0 || j.GID < 0 {
		return fmt.Errorf("firecracker jailer: negative uid %d or gid %d", j.UID, j.GID)
	}
	return nil
}

// jailRoot is the chroot the jailer builds for id: <base>/<exec file name>/<id>/root.
func (j *Jailer) jailRoot(id string) string {
	return filepath.Join(j.ChrootBaseDir, filepath.Base(j.ExecFile), id, "root")
}

// process is one running Firecracker (or jailer-then-Firecracker) process and its API socket.
type process struct {
	id  string
	cmd *exec.Cmd
	// apiSock is the API socket's host path.
	apiSock string
	// root is the host directory API paths are relative to: "" for a plain process (API paths are
	// host paths), the jail root with the jailer.
	root string
	// jailDir is <base>/<exec>/<id> with the jailer, removed on kill.
	jailDir string
	// jailUID and jailGID are the ids the jailed VMM runs as (with the jailer).
	jailUID, jailGID int
	client           *fcapi.Client
	log              *slog.Logger

	done    chan struct{} // closed when the process was waited for
	waitErr error         // set before done is closed

	killOnce sync.Once
}

// startConfig are what startProcess needs.
type startConfig struct {
	Binary string  // firecracker binary (plain mode)
	Jailer *Jailer // when set, start through the jailer
	ID     string
	RunDir string
	Output io.Writer // VMM stdout+stderr (the guest console goes to stdout); nil discards
	Log    *slog.Logger
	// SocketTimeout bounds the wait for the API socket.
	SocketTimeout time.Duration
	// MemoryMB and VCPUs size the jailer's cgroup limits (guest RAM + JailerOverheadMB, one CPU
	// per vCPU plus one); 0 leaves them out.
	MemoryMB, VCPUs int
	// Netns is a network namespace (a path) the jailer joins before it execs Firecracker
	// (--netns); "" keeps the host's. Only with a jailer.
	Netns string
}

// JailerOverheadMB is the memory a jailed Firecracker may use beyond guest RAM (Firecracker's
// published overhead is under 5 MiB; the margin covers its page tables and buffers).
const JailerOverheadMB = 64

// jailerCgroupArgs are the jailer's --cgroup limits for one VM, in the cgroup version the host
// runs (the jailer's default parent cgroup is "firecracker").
func jailerCgroupArgs(memoryMB, vcpus int) []string {
	if memoryMB <= 0 {
		return nil
	}
	mem := strconv.FormatInt(int64(memoryMB+JailerOverheadMB)<<20, 10)
	quota := strconv.Itoa((vcpus + 1) * 100000)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return []string{"--cgroup-version", "2", "--cgroup", "memory.max=" + mem, "--cgroup", "pids.max=128",
			"--cgroup", "cpu.max=" + quota + " 100000"}
	}
	return []string{"--cgroup-version", "1", "--cgroup", "memory.limit_in_bytes=" + mem, "--cgroup", "pids.max=128",
		"--cgroup", "cpu.cfs_period_us=100000", "--cgroup", "cpu.cfs_quota_us=" + quota}
}

// startProcess starts Firecracker, writes RunDir/vmm.pid and waits until the API answers. On error
// nothing is left running and the jail dir is removed.
func startProcess(ctx context.Context, o startConfig) (*process, error) {
	if !validInstanceID(o.ID) {
		return nil, fmt.Errorf("firecracker: invalid vm id %q (want 1-64 of [A-Za-z0-9-])", o.ID)
	}
	if !filepath.IsAbs(o.RunDir) {
		return nil, fmt.Errorf("firecracker: run dir %q is not absolute", o.RunDir)
	}
	p := &process{id: o.ID, done: make(chan struct{}), log: o.Log}
	if o.Jailer != nil {
		p.jailUID, p.jailGID = o.Jailer.UID, o.Jailer.GID
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	var args []string
	var bin string
	if o.Jailer != nil {
		if err := o.Jailer.validate(); err != nil {
			return nil, err
		}
		bin = o.Jailer.Binary
		if bin == "" {
			var err error
			if bin, err = exec.LookPath("jailer"); err != nil {
				return nil, fmt.Errorf("firecracker: jailer: %w", err)
			}
		}
		p.root = o.Jailer.jailRoot(o.ID)
		p.jailDir = filepath.Dir(p.root)
		if _, err := os.Lstat(p.jailDir); err == nil {
			return nil, fmt.Errorf("firecracker: jail %s already exists (id reused or orphan)", p.jailDir)
		}
		p.apiSock = filepath.Join(p.root, "api.sock")
		args = []string{"--id", o.ID, "--exec-file", o.Jailer.ExecFile,
			"--uid", strconv.Itoa(o.Jailer.UID), "--gid", strconv.Itoa(o.Jailer.GID),
			"--chroot-base-dir", o.Jailer.ChrootBaseDir}
		args = append(args, jailerCgroupArgs(o.MemoryMB, o.VCPUs)...)
		if o.Netns != "" {
			args = append(args, "--netns", o.Netns)
		}
		args = append(args, "--", "--api-sock", "/api.sock")
	} else {
		if o.Netns != "" {
			return nil, errors.New("firecracker: joining a network namespace needs the jailer")
		}
		bin = o.Binary
		p.apiSock = filepath.Join(o.RunDir, "api.sock")
		args = []string{"--api-sock", p.apiSock, "--id", o.ID}
	}
	if len(p.apiSock) > maxUnixPath {
		return nil, fmt.Errorf("firecracker: socket path %s is too long for a unix socket (max %d bytes)", p.apiSock, maxUnixPath)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = nil
	out := o.Output
	if out == nil {
		out = io.Discard
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = time.Second
	// The parent-death signal follows the thread that forks: spawn.Start forks from one that
	// never exits.
	if err := spawn.Start(cmd); err != nil {
		return nil, fmt.Errorf("firecracker: start %s: %w", bin, err)
	}
	p.cmd = cmd
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	if err := os.WriteFile(filepath.Join(o.RunDir, "vmm.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600); err != nil {
		p.kill()
		return nil, fmt.Errorf("firecracker: write pidfile: %w", err)
	}
	p.client = fcapi.NewClient(p.apiSock)
	if err := p.waitAPI(ctx, o.SocketTimeout); err != nil {
		p.kill()
		return nil, err
	}
	p.log.Debug("firecracker api ready", "id", o.ID, "pid", cmd.Process.Pid, "socket", p.apiSock)
	return p, nil
}

// waitAPI polls until the API socket accepts connections and GET / answers.
func (p *process) waitAPI(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := time.Millisecond
	for {
		if c, err := net.Dial("unix", p.apiSock); err == nil {
			c.Close()
			if _, err := p.client.DescribeInstance(ctx); err == nil {
				return nil
			} else if ctx.Err() == nil {
				return fmt.Errorf("firecracker: api at %s: %w", p.apiSock, err)
			}
		}
		select {
		case <-p.done:
			return fmt.Errorf("firecracker: process exited before its api socket appeared: %v", p.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("firecracker: api socket %s not ready: %w", p.apiSock, ctx.Err())
		case <-time.After(delay):
		}
		if delay < 20*time.Millisecond {
			delay *= 2
		}
	}
}

// hostPath maps a path as Firecracker sees it to the host.
func (p *process) hostPath(vmPath string) string {
	if p.root == "" {
		return vmPath
	}
	return filepath.Join(p.root, vmPath)
}

// importFile makes the host file src visible to Firecracker and returns the path to give the API:
// src itself for a plain process; a hard link (or copy) inside the jail for the jailer.
func (p *process) importFile(src, name string) (string, error) {
	if p.root == "" {
		return src, nil
	}
	dst := filepath.Join(p.root, name)
	if err := os.Link(src, dst); err != nil {
		if err := copyFile(src, dst); err != nil {
			return "", fmt.Errorf("firecracker: import %s into the jail: %w", src, err)
		}
	}
	return "/" + name, nil
}

// importPrivateFile is importFile for a file only root may read (an image drive): with the jailer,
// a copy inside the jail that only the VMM's uid may read (a hard link would have to change the
// cached file's owner).
func (p *process) importPrivateFile(src, name string) (string, error) {
	if p.root == "" {
		return src, nil
	}
	dst := filepath.Join(p.root, name)
	if err := copyFile(src, dst); err != nil {
		return "", fmt.Errorf("firecracker: import %s into the jail: %w", src, err)
	}
	if err := os.Chown(dst, p.jailUID, p.jailGID); err != nil {
		return "", fmt.Errorf("firecracker: import %s into the jail: %w", src, err)
	}
	if err := os.Chmod(dst, 0o400); err != nil {
		return "", fmt.Errorf("firecracker: import %s into the jail: %w", src, err)
	}
	return "/" + name, nil
}

// kill stops the process, waits for it and removes the socket and the jail. Idempotent.
func (p *process) kill() error {
	p.killOnce.Do(func() {
		select {
		case <-p.done:
		default:
			if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
				p.log.Warn("firecracker: kill", "id", p.id, "err", err)
			}
			<-p.done
		}
		if p.client != nil {
			p.client.CloseIdleConnections()
		}
		os.Remove(p.apiSock)
		if p.jailDir != "" {
			if err := os.RemoveAll(p.jailDir); err != nil {
				p.log.Warn("firecracker: remove jail", "dir", p.jailDir, "err", err)
			}
			removeJailerCgroups(filepath.Base(filepath.Dir(p.jailDir)), p.id)
		}
	})
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// removeJailerCgroups removes the per-VM cgroups the jailer may have created under its parent
// cgroup (named after the exec file) in every cgroup v1 controller and in cgroup v2. Only empty
// cgroups can be removed, so this is safe after the process exited.
func removeJailerCgroups(parent, id string) {
	for _, base := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		os.Remove(filepath.Join(base, parent, id))
		entries, err := os.ReadDir(base)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				os.Remove(filepath.Join(base, e.Name(), parent, id))
			}
		}
	}
}
