package keeper

import (
	"os"
	"syscall"
)

// LockDir opens dir (not following a symlink) and flocks it with how (syscall.LOCK_SH, LOCK_EX,
// possibly | LOCK_NB): the owner lock a sandbox and its keeper hold on the sandbox's directory,
// and that a reaper tries to take exclusively. The lock lasts while the returned file is open.
func LockDir(dir string, how int) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
