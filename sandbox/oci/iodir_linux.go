package oci

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// The I/O dir of a call ({StateRoot}/{id}, bound at /axocoatl) is, as root, a tmpfs of its own
// mounted for the call:
//   - its size is capped, so a tool cannot fill the state root's file system (a tool with a 256 MB
//     memory limit wrote 2 GiB into a plain directory on the host disk; on a tmpfs state root the
//     next call then failed with ENOSPC);
//   - its inode count is capped, so empty files and directories (which use no tmpfs blocks) cannot
//     pin unbounded kernel memory either;
//   - tearing it down is a lazy unmount and the removal of an empty directory, whatever the tool
//     built in it: a directory tree 30,000 deep made a recursive delete run out of descriptors and
//     the I/O dir survived the call and the next reap.
//
// A rootless sandbox cannot mount in the host's mount namespace: its I/O dir stays a plain
// directory (no cap), removed by removeTree, which needs two descriptors whatever the depth.

// ioInodes caps the inodes of an I/O tmpfs: input.json, output.json and some room; a tool's scratch
// space is /tmp.
const ioInodes = 4096

// ioSize is the byte cap of a call's I/O tmpfs: the configured room (at least twice the call's
// output cap, so output.json always fits with room to write it atomically) plus the input,
// rounded up to whole pages (tmpfs counts pages).
func (s *Sandbox) ioSize(maxOutput int64, inputLen int) int64 {
	room := int64(s.cfg.IOSizeMB) << 20
	room = max(room, 2*maxOutput)
	const page = 4096
	return room + (int64(inputLen)+page-1)/page*page
}

// mountIODir mounts a tmpfs of size bytes on dir, its root owned by uid:gid with mode 0700.
func mountIODir(dir string, size int64, uid, gid int) error {
	data := "size=" + strconv.FormatInt(size, 10) + ",nr_inodes=" + strconv.Itoa(ioInodes) +
		",mode=0700,uid=" + strconv.Itoa(uid) + ",gid=" + strconv.Itoa(gid)
	if err := unix.Mount("axocoatl-io", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		return fmt.Errorf("mount the I/O tmpfs on %s: %w", dir, err)
	}
	return nil
}

// resizeIODir changes the size cap of a mounted I/O tmpfs (a pooled container's, made before its
// call's input was known). The change applies to the file system itself, so also to the
// container's bind mount of it.
func resizeIODir(dir string, size int64) error {
	data := "size=" + strconv.FormatInt(size, 10)
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		return fmt.Errorf("resize the I/O tmpfs on %s: %w", dir, err)
	}
	return nil
}

// removeIODir removes an I/O dir: a lazy unmount of its tmpfs (whatever is in it goes with the
// file system once the container's references are gone), then an empty directory. A directory
// that is not empty (rootless, or left by an owner from before the per-call tmpfs) is removed by
// removeTree.
func removeIODir(dir string) error {
	for {
		// A tool cannot mount in its container, but loop anyway: the top of the stack is what
		// a path resolves to, and only an empty directory must remain.
		err := unix.Unmount(dir, unix.MNT_DETACH)
		if err != nil {
			break // EINVAL: not a mount point (any more); ENOENT: gone
		}
	}
	err := unix.Rmdir(dir)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
		return removeTree(dir)
	}
	return fmt.Errorf("remove I/O dir %s: %w", dir, err)
}

// removeTree removes dir and everything below it (untrusted code built it) without recursion and
// with at most two open descriptors, whatever the tree's depth or width: a depth-first walk that
// descends by name with O_NOFOLLOW (a symlink is removed, never followed), climbs back through
// "..", and keeps only the names of the directories it is in.
func removeTree(dir string) error {
	cur, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return unix.Unlink(dir)
		}
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	defer func() { unix.Close(cur) }()
	var path []string // the names from dir down to cur
	buf := make([]byte, 16<<10)
	fail := func(name string, err error) error {
		return fmt.Errorf("remove %s: %w", filepath.Join(append(append([]string{dir}, path...), name)...), err)
	}
	for {
		names, err := readNames(cur, buf)
		if err != nil {
			return fail("", err)
		}
		if len(names) == 0 {
			if len(path) == 0 {
				break
			}
			parent, err := unix.Openat(cur, "..", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fail("..", err)
			}
			unix.Close(cur)
			cur = parent
			name := path[len(path)-1]
			path = path[:len(path)-1]
			if err := unix.Unlinkat(cur, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
				return fail(name, err)
			}
			continue
		}
		for _, name := range names {
			sub, err := removeEntry(cur, name)
			if err != nil {
				return fail(name, err)
			}
			if sub >= 0 { // a non-empty directory: empty it first
				unix.Close(cur)
				cur = sub
				path = append(path, name)
				break
			}
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// removeEntry removes name in the directory fd dir; for a directory that is not empty it returns
// it opened instead (else -1).
func removeEntry(dir int, name string) (int, error) {
	err := unix.Unlinkat(dir, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return -1, nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return -1, err
	}
	if err = unix.Unlinkat(dir, name, unix.AT_REMOVEDIR); err == nil || errors.Is(err, unix.ENOENT) {
		return -1, nil
	}
	if !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EEXIST) {
		return -1, err
	}
	const flags = unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	sub, err := unix.Openat(dir, name, flags, 0)
	if errors.Is(err, unix.EACCES) {
		// A directory the tool made unreadable (rootless: the tool's files are this user's).
		if err = unix.Fchmodat(dir, name, 0o700, 0); err == nil {
			sub, err = unix.Openat(dir, name, flags, 0)
		}
	}
	if err != nil {
		return -1, err
	}
	return sub, nil
}

// readNames returns about 1024 entry names of the open directory fd from its start (buf: getdents'
// buffer).
func readNames(fd int, buf []byte) ([]string, error) {
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return nil, err
	}
	var names []string
	for len(names) < 1024 {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	return names, nil
}
