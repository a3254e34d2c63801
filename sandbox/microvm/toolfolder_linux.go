package microvm

import (
	"errors"
	"io"
	"os"
	"path"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation/internal/guest"
)

// readToolFolder reads the tool folder dir into the files of a request, as the tool's uid in the
// guest (guest.ToolUID) could see it on the host: every entry must be a regular file or a
// directory that uid may read (and enter), else the call is refused with isolation.ErrInvalidTool
// naming the entry. A hard link to a root-only file, a symbolic link (to anywhere), a FIFO or a
// device is never read. Each file goes with the tool's own access to it (0o444 or 0o555).
//
// Entries are opened relative to their directory's descriptor with O_NOFOLLOW, after an lstat
// that must match the opened file, so nothing outside dir is read even if the folder changes
// during the walk. The walk is bounded by MaxToolFiles, maxToolDepth and MaxToolBytes.
func readToolFolder(dir string) ([]guest.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, errToolFolder(dir, ".", "%v", err)
	}
	w := &folderWalk{top: dir}
	if err := w.walk(fd, ".", 0); err != nil {
		return nil, err
	}
	return w.files, nil
}

type folderWalk struct {
	top     string
	files   []guest.File
	entries int
	bytes   int64
}

// toolAccess is what guest.ToolUID (gid guest.ToolGID, no supplementary groups) may do with a
// file of this owner and mode, as the kernel decides it: the owner's bits if it owns the file,
// else the group's if the file is in its group, else the others' (rwx as 4, 2, 1). ACLs are not
// consulted: a file an ACL alone opens to the tool is refused, which errs on the safe side.
func toolAccess(st *unix.Stat_t) uint32 {
	switch {
	case st.Uid == guest.ToolUID:
		return st.Mode >> 6 & 7
	case st.Gid == guest.ToolGID:
		return st.Mode >> 3 & 7
	}
	return st.Mode & 7
}

// walk sends the entries of the open directory fd (rel from the top; fd is closed on return).
func (w *folderWalk) walk(fd int, rel string, depth int) error {
	d := os.NewFile(uintptr(fd), rel)
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return errToolFolder(w.top, rel, "%v", err)
	}
	if a := toolAccess(&st); a&5 != 5 {
		return errToolFolder(w.top, rel, "directory mode %#o: uid %d could not list and enter it", st.Mode&0o7777, guest.ToolUID)
	}
	var names []string
	for {
		batch, err := d.Readdirnames(256)
		names = append(names, batch...)
		if w.entries+len(names) > MaxToolFiles {
			return errToolFolder(w.top, rel, "more than %d entries in the tool folder", MaxToolFiles)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return errToolFolder(w.top, rel, "%v", err)
		}
	}
	w.entries += len(names)
	slices.Sort(names)
	for _, name := range names {
		p := path.Join(rel, name)
		var lst unix.Stat_t
		if err := unix.Fstatat(fd, name, &lst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return errToolFolder(w.top, p, "%v", err)
		}
		switch lst.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			if depth+1 >= maxToolDepth {
				return errToolFolder(w.top, p, "nested deeper than %d levels", maxToolDepth)
			}
			cfd, err := w.open(fd, name, p, &lst, unix.O_DIRECTORY)
			if err != nil {
				return err
			}
			if err := w.walk(cfd, p, depth+1); err != nil {
				return err
			}
		case unix.S_IFREG:
			if a := toolAccess(&lst); a&4 == 0 {
				return errToolFolder(w.top, p, "mode %#o, owner %d:%d: uid %d could not read it", lst.Mode&0o7777, lst.Uid, lst.Gid, guest.ToolUID)
			}
			if w.bytes+lst.Size > MaxToolBytes {
				return errToolFolder(w.top, p, "the tool folder is over %d bytes", MaxToolBytes)
			}
			cfd, err := w.open(fd, name, p, &lst, 0)
			if err != nil {
				return err
			}
			f := os.NewFile(uintptr(cfd), p)
			data, err := io.ReadAll(io.LimitReader(f, MaxToolBytes-w.bytes+1))
			f.Close()
			if err != nil {
				return errToolFolder(w.top, p, "%v", err)
			}
			if w.bytes += int64(len(data)); w.bytes > MaxToolBytes {
				return errToolFolder(w.top, p, "the tool folder is over %d bytes", MaxToolBytes)
			}
			mode := uint32(0o444)
			if toolAccess(&lst)&1 != 0 {
				mode = 0o555
			}
			w.files = append(w.files, guest.File{Path: p, Mode: mode, Data: data})
		case unix.S_IFLNK:
			return errToolFolder(w.top, p, "a symbolic link (tool folders hold regular files and directories only)")
		default:
			return errToolFolder(w.top, p, "not a regular file or directory (mode %#o)", lst.Mode)
		}
	}
	return nil
}

// open opens name in directory fd without following a symbolic link or blocking on a FIFO, and
// checks it is the file lst described (not swapped since).
func (w *folderWalk) open(fd int, name, p string, lst *unix.Stat_t, flags int) (int, error) {
	cfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		return -1, errToolFolder(w.top, p, "%v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(cfd, &st); err != nil || st.Dev != lst.Dev || st.Ino != lst.Ino || st.Mode != lst.Mode {
		unix.Close(cfd)
		return -1, errToolFolder(w.top, p, "changed while it was read")
	}
	return cfd, nil
}
