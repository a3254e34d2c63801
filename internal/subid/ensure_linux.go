package subid

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Default files.
const (
	UIDFile = "/etc/subuid"
	GIDFile = "/etc/subgid"
)

// EnsureConfig says whose ranges to find and what to register when there are none.
type EnsureConfig struct {
	User string
	// Count ids are registered (the same start in both files) when User has no range in a
	// file; Min is the lowest start considered and starts are aligned to Align.
	Count, Min, Align uint32
	// UIDFile and GIDFile default to /etc/subuid and /etc/subgid.
	UIDFile, GIDFile string
	// LockFile serialises Ensure across processes (required).
	LockFile string
	// CreateUser runs `useradd --system` for User when it does not exist and the files are the
	// system's, and registers the range with `usermod` (shadow's own locking) when it can.
	CreateUser bool
}

// Ensure returns User's uid and gid ranges, registering Count ids for it first when a file has
// none. Idempotent and safe against concurrent callers (LockFile); added says it wrote.
func Ensure(o EnsureConfig) (uids, gids []Range, added bool, err error) {
	if o.UIDFile == "" {
		o.UIDFile = UIDFile
	}
	if o.GIDFile == "" {
		o.GIDFile = GIDFile
	}
	if o.User == "" || strings.ContainsAny(o.User, ":\n") || o.LockFile == "" {
		return nil, nil, false, fmt.Errorf("subid: bad options (user %q, lock file %q)", o.User, o.LockFile)
	}
	read := func() ([]Entry, []Entry, error) {
		bu, err := readFile(o.UIDFile)
		if err != nil {
			return nil, nil, err
		}
		bg, err := readFile(o.GIDFile)
		if err != nil {
			return nil, nil, err
		}
		return Parse(bu), Parse(bg), nil
	}
	uid := ""
	if u, err := user.Lookup(o.User); err == nil {
		uid = u.Uid
	}
	eu, eg, err := read()
	if err != nil {
		return nil, nil, false, err
	}
	if uids, gids = Of(eu, o.User, uid), Of(eg, o.User, uid); len(uids) > 0 && len(gids) > 0 {
		return uids, gids, false, nil
	}
	if err := os.MkdirAll(filepath.Dir(o.LockFile), 0o711); err != nil {
		return nil, nil, false, err
	}
	lf, err := os.OpenFile(o.LockFile, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, nil, false, err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX); err != nil {
		return nil, nil, false, fmt.Errorf("subid: lock %s: %w", o.LockFile, err)
	}
	system := o.UIDFile == UIDFile && o.GIDFile == GIDFile
	if o.CreateUser && system && uid == "" {
		if err := run("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
			"--shell", "/usr/sbin/nologin", "--user-group", "--comment", "axocoatl container ids", o.User); err == nil {
			if u, err := user.Lookup(o.User); err == nil {
				uid = u.Uid
			}
		}
	}
	// Re-read under the lock: another process may have registered it meanwhile.
	if eu, eg, err = read(); err != nil {
		return nil, nil, false, err
	}
	uids, gids = Of(eu, o.User, uid), Of(eg, o.User, uid)
	if len(uids) > 0 && len(gids) > 0 {
		return uids, gids, false, nil
	}
	start, err := FreeStart([][]Entry{eu, eg}, o.Min, o.Count, o.Align)
	if err != nil {
		return nil, nil, false, err
	}
	r := Range{Start: start, Count: o.Count}
	span := fmt.Sprintf("%d-%d", r.Start, r.End()-1)
	var args []string
	if len(uids) == 0 {
		args = append(args, "--add-subuids", span)
	}
	if len(gids) == 0 {
		args = append(args, "--add-subgids", span)
	}
	if system && uid != "" && run("usermod", append(args, o.User)...) == nil {
		// shadow's usermod did it with its own locking.
	} else {
		line := fmt.Sprintf("%s:%d:%d\n", o.User, r.Start, r.Count)
		if len(uids) == 0 {
			if err := appendLine(o.UIDFile, line); err != nil {
				return nil, nil, false, err
			}
		}
		if len(gids) == 0 {
			if err := appendLine(o.GIDFile, line); err != nil {
				return nil, nil, false, err
			}
		}
	}
	if eu, eg, err = read(); err != nil {
		return nil, nil, false, err
	}
	uids, gids = Of(eu, o.User, uid), Of(eg, o.User, uid)
	if len(uids) == 0 || len(gids) == 0 {
		return nil, nil, false, fmt.Errorf("subid: registered %s for %s but %s/%s still lack it", span, o.User, o.UIDFile, o.GIDFile)
	}
	return uids, gids, true, nil
}

func readFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 16<<20+1))
	if err == nil && len(b) > 16<<20 {
		err = fmt.Errorf("subid: %s is over 16 MiB", p)
	}
	return b, err
}

// appendLine appends one line with a single write (the file ends with a newline first).
func appendLine(p, line string) error {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_APPEND|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	_, err = f.WriteString(line)
	return errors.Join(err, f.Sync())
}

func run(name string, args ...string) error {
	p, err := exec.LookPath(name)
	if err != nil {
		for _, d := range []string{"/usr/sbin", "/sbin"} {
			if _, serr := os.Stat(filepath.Join(d, name)); serr == nil {
				p, err = filepath.Join(d, name), nil
				break
			}
		}
		if err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
