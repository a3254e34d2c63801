package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/axocoatl/isolation/internal/spawn"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// binaryBackend drives an installed OCI runtime (crun or runc) with `run`, so the runtime itself
// waits for the process and reports its exit status. runc gets `--keep`: the container stays
// until destroy so its memory cgroup can be read for OOM kills. crun 1.8 has no --keep and
// deletes the cgroup on exit, so with crun an exit by SIGKILL that the sandbox did not send is
// taken as the OOM killer's (a tool that SIGKILLs itself is misreported as a memory-limit kill).
type binaryBackend struct {
	kind       string // "crun" or "runc"
	bin        string // absolute path of the executable
	root       string // --root ({StateRoot}/.runtime)
	bundles    string // {StateRoot}/.bundles
	hybridFix  bool   // run in a mount namespace without /sys/fs/cgroup/unified (crun on hybrid)
	useSystemd bool
	keep       bool // runtime supports `run --keep` (runc)
}

func (b *binaryBackend) name() string  { return b.kind }
func (b *binaryBackend) canPool() bool { return false }

// command builds an invocation of the runtime. On a cgroup v1 host with the unified hierarchy
// also mounted (hybrid), crun 1.8 refuses to run; in a private mount namespace with the unified
// mount removed it sees plain v1. Go unshares the mount namespace and makes "/" private in the
// child; /bin/sh then unmounts and execs the runtime (arguments passed as "$@", never parsed).
func (b *binaryBackend) command(args ...string) *exec.Cmd { return b.commandNofile(0, args...) }

// commandNofile is command with the runtime itself started under RLIMIT_NOFILE nofile (soft and
// hard; 0: unchanged), which the container's process inherits.
func (b *binaryBackend) commandNofile(nofile uint64, args ...string) *exec.Cmd {
	full := append([]string{"--root", b.root}, args...)
	if b.useSystemd {
		full = append([]string{"--systemd-cgroup"}, full...)
	}
	script := ""
	if b.hybridFix {
		script = "umount -l /sys/fs/cgroup/unified && "
	}
	if nofile > 0 {
		script += "ulimit -n " + strconv.FormatUint(nofile, 10) + " && "
	}
	if script == "" {
		return exec.Command(b.bin, full...)
	}
	cmd := exec.Command("/bin/sh", append([]string{"-c", script + `exec "$0" "$@"`, b.bin}, full...)...)
	if b.hybridFix {
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	}
	return cmd
}

func (b *binaryBackend) create(id string, spec *specs.Spec, stdout, stderr io.Writer, ns *slotNS) (instance, error) {
	var nofile uint64
	if ns != nil {
		// Join the slot's namespace. The spec keeps its mappings (the namespace's): runc 1.1
		// requires them, and neither runtime writes maps into a namespace it joins.
		sp := *spec
		l := *spec.Linux
		l.Namespaces = append([]specs.LinuxNamespace(nil), l.Namespaces...)
		if b.kind == BackendRunc && spec.Process != nil {
			// runc sets rlimits with a prlimit from outside the namespace, which needs
			// CAP_SYS_RESOURCE over it (some hosts' root lacks it); it runs under the limit
			// instead, and the process inherits it.
			p := *spec.Process
			for _, r := range p.Rlimits {
				if r.Type == "RLIMIT_NOFILE" {
					nofile = r.Hard
				}
			}
			p.Rlimits = nil
			sp.Process = &p
		}
		for i := range l.Namespaces {
			if l.Namespaces[i].Type == specs.UserNamespace {
				l.Namespaces[i].Path = ns.path
			}
		}
		sp.Linux = &l
		spec = &sp
	}
	dir := filepath.Join(b.bundles, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(spec)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o600)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return &binInstance{b: b, id: id, dir: dir, stdout: stdout, stderr: stderr, cgroupsPath: spec.Linux.CgroupsPath, nofile: nofile, exited: make(chan struct{})}, nil
}

func (b *binaryBackend) ids() []string {
	seen := map[string]bool{}
	var ids []string
	for _, d := range []string{b.root, b.bundles} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if e.IsDir() && !seen[e.Name()] {
				seen[e.Name()] = true
				ids = append(ids, e.Name())
			}
		}
	}
	return ids
}

func (b *binaryBackend) reap(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := b.command("delete", "--force", id)
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	_ = runCtx(ctx, cmd)
	_ = os.RemoveAll(filepath.Join(b.bundles, id))
}

func runCtx(ctx context.Context, cmd *exec.Cmd) error {
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(buf.String()))
		}
		return nil
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return ctx.Err()
	}
}

type binInstance struct {
	b           *binaryBackend
	id, dir     string
	stdout      io.Writer // the container's stdout (the runtime's, in the foreground)
	stderr      io.Writer
	cgroupsPath string
	nofile      uint64 // RLIMIT_NOFILE to start the runtime under (0: none)

	mu     sync.Mutex // protects cmd, killed, status
	cmd    *exec.Cmd
	killed bool // kill was called
	status int  // exit code from wait

	exited chan struct{} // closed by wait once the runtime's `run` process exited

	once       sync.Once // guards destroyErr
	destroyErr error
}

func (i *binInstance) start() error {
	args := []string{"run", "--bundle", i.dir, i.id}
	if i.b.keep {
		args = append([]string{"run", "--keep"}, args[1:]...)
	}
	cmd := i.b.commandNofile(i.nofile, args...)
	cmd.Stdout, cmd.Stderr = i.stdout, i.stderr
	// The container's processes hold the output pipe: once the runtime exited (or kill gave up
	// and killed it), Wait must not also wait for them to close it.
	cmd.WaitDelay = time.Second
	// The runtime must not die with a signal meant for us mid-call; destroy cleans up.
	cmd.SysProcAttr = withPdeathsig(cmd.SysProcAttr)
	i.mu.Lock()
	defer i.mu.Unlock()
	// From the dedicated forking thread: Pdeathsig follows the thread that forks (see spawn).
	if err := spawn.Start(cmd); err != nil {
		return err
	}
	i.cmd = cmd
	return nil
}

func withPdeathsig(a *syscall.SysProcAttr) *syscall.SysProcAttr {
	if a == nil {
		a = &syscall.SysProcAttr{}
	}
	a.Pdeathsig = syscall.SIGKILL
	return a
}

func (i *binInstance) wait() (int, error) {
	i.mu.Lock()
	cmd := i.cmd
	i.mu.Unlock()
	if cmd == nil {
		return -1, errors.New("container not started")
	}
	err := cmd.Wait()
	close(i.exited)
	var ee *exec.ExitError
	if err == nil || errors.As(err, &ee) {
		// `run` exits with the container process's status (128+n for signal n).
		code := exitCode(cmd.ProcessState)
		i.mu.Lock()
		i.status = code
		i.mu.Unlock()
		return code, nil
	}
	return -1, err
}

// kill signals the container through the runtime. `kill` fails while `run` has not yet created
// the container (a call cancelled right after start), so it is repeated until the run process
// exits; after 5 s the runtime process itself is killed (destroy's `delete --force` removes what
// it leaves), so a call never waits on a container that missed its signal.
func (i *binInstance) kill() {
	i.mu.Lock()
	i.killed = true
	cmd := i.cmd
	i.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = runCtx(ctx, i.b.command("kill", i.id, "KILL"))
		cancel()
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-i.exited:
			t.Stop()
			return
		case <-t.C:
		}
		if time.Now().After(deadline) {
			if cmd != nil {
				_ = cmd.Process.Kill()
			}
			return
		}
	}
}

func (i *binInstance) oomKilled() bool {
	if !i.b.keep {
		i.mu.Lock()
		defer i.mu.Unlock()
		return i.status == 128+int(syscall.SIGKILL) && !i.killed
	}
	if i.b.useSystemd {
		return false
	}
	return oomKillCount(memoryCgroupDir(i.cgroupsPath)) > 0
}

func (i *binInstance) destroy() error {
	i.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := runCtx(ctx, i.b.command("delete", "--force", i.id))
		i.mu.Lock()
		cmd := i.cmd
		i.mu.Unlock()
		if cmd != nil && cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if _, serr := os.Stat(filepath.Join(i.b.root, i.id)); serr != nil {
			err = nil // already gone (a `run` that failed early leaves nothing)
		}
		i.destroyErr = errors.Join(err, os.RemoveAll(i.dir))
	})
	return i.destroyErr
}
