package ociimage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// install moves the finished bundle tmp to dest. Without replace it uses RENAME_NOREPLACE, so a
// dest created meanwhile is not clobbered. With replace it exchanges the two atomically
// (RENAME_EXCHANGE) and returns the old bundle's new path (tmp) for removal, or "" when there was
// none.
func install(tmp, dest string, replace bool) (old string, err error) {
	if !replace {
		if err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dest, unix.RENAME_NOREPLACE); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return "", fmt.Errorf("%w: %s", ErrExists, dest)
			}
			if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
				return "", fmt.Errorf("moving the bundle into place: %w", err)
			}
			// The file system lacks renameat2 flags: check, then rename (not atomic).
			if _, err := os.Lstat(dest); err == nil {
				return "", fmt.Errorf("%w: %s", ErrExists, dest)
			}
			if err := os.Rename(tmp, dest); err != nil {
				return "", fmt.Errorf("moving the bundle into place: %w", err)
			}
		}
		return "", nil
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dest, unix.RENAME_EXCHANGE)
	switch {
	case err == nil:
		return tmp, nil
	case errors.Is(err, unix.ENOENT):
		if _, serr := os.Lstat(dest); errors.Is(serr, os.ErrNotExist) {
			return install(tmp, dest, false)
		}
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS):
		// No exchange on this file system: move the old one aside, then the new one in.
		aside := filepath.Join(filepath.Dir(tmp), filepath.Base(tmp)+".old")
		if err := os.Rename(dest, aside); err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("moving the old bundle aside: %w", err)
		}
		if err := os.Rename(tmp, dest); err != nil {
			_ = os.Rename(aside, dest) // put the old bundle back
			return "", fmt.Errorf("moving the bundle into place: %w", err)
		}
		return aside, nil
	}
	return "", fmt.Errorf("replacing %s: %w", dest, err)
}
