package oci

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Why the sandbox mounts a container's rootfs itself when the container has a user namespace:
// libcontainer's init bind-mounts the rootfs onto itself from inside the container's user
// namespace, as the slot's unprivileged uid, so every directory above the rootfs would have to
// be searchable by others, and `axoiso bundle` makes bundle folders 0700 on purpose (a rootfs
// may hold set-id binaries). The sandbox (host root) instead attaches a read-only, nosuid, nodev
// clone of the rootfs at /run/axocoatl/roots/{id}/rootfs (reachable whatever the state root's
// parents are; {id} is 0700 and belongs to the container's root) and gives the runtime that path.
//
// The clone is id-mapped through the slot's user namespace (MOUNT_ATTR_IDMAP, Linux 5.12+, on
// file systems that support it: ext4, xfs, btrfs, tmpfs 6.3+, overlayfs 5.19+): files the image
// gave to uid 0 appear owned by the container's root, exactly as they would without a user
// namespace, so a root-only (0700, 0600) file of the image stays usable by a bundle that runs as
// its uid 0. Where the file system cannot id-map, the clone is a plain one: files then appear
// owned by the overflow id (nobody) and only their "other" permission bits apply, the usual
// trade-off of user namespaces without id-mapped mounts.

// mountRoot attaches the rootfs src at dir/rootfs, read-only, id-mapped through ns when the file
// system allows it, and returns that path. dir (created) is 0700 and owned by uid/gid, the
// container's root: the container's init reaches the rootfs through it, host users cannot (the
// bundle folder it comes from may be 0700). It reports whether the mount is id-mapped.
func mountRoot(src, dir string, ns *os.File, uid, gid int) (root string, idmapped bool, err error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", false, err
	}
	defer func() {
		if err != nil {
			_ = unmountRoot(dir)
		}
	}()
	root = filepath.Join(dir, "rootfs")
	if err := os.Chown(dir, uid, gid); err != nil {
		return "", false, err
	}
	if err := os.Mkdir(root, 0o700); err != nil {
		return "", false, err
	}
	// AT_SYMLINK_NOFOLLOW: a rootfs that is a symlink is refused, not followed to wherever it
	// points. AT_RECURSIVE: mounts inside the rootfs come along, as with a runtime's rbind.
	fd, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW|unix.AT_RECURSIVE)
	if err != nil {
		return "", false, &os.PathError{Op: "open_tree", Path: src, Err: err}
	}
	defer unix.Close(fd)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if ns != nil {
		idm := attr
		idm.Attr_set |= unix.MOUNT_ATTR_IDMAP
		idm.Userns_fd = uint64(ns.Fd())
		err = unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &idm)
		idmapped = err == nil
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOSYS) {
			return "", false, fmt.Errorf("id-map %s: %w", src, err)
		}
	}
	if !idmapped {
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
			return "", false, fmt.Errorf("mount_setattr %s: %w", src, err)
		}
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, root, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return "", false, &os.PathError{Op: "move_mount", Path: root, Err: err}
	}
	return root, idmapped, nil
}

// unmountRoot detaches and removes what mountRoot made in dir.
func unmountRoot(dir string) error {
	root := filepath.Join(dir, "rootfs")
	err := unix.Unmount(root, unix.MNT_DETACH)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		err = nil // not mounted
	}
	for _, p := range []string{root, dir} {
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}
