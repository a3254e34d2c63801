package ociimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
	// maxSymlinkFollows bounds symlink resolution in a parent path, as the kernel does (ELOOP).
	maxSymlinkFollows = 40
)

// unpacker applies layers, in order, to one rootfs. It is used by one goroutine.
//
// Every path it handles is relative to the rootfs ("." is the rootfs itself) and every file
// system operation goes through root (an *os.Root) or through a directory fd opened by it, so
// the kernel, not string checks alone, keeps writes inside the rootfs. Parent directories are
// first resolved by resolveDir, which follows symlinks that stay inside the rootfs (as umoci does)
// and refuses those that do not.
type unpacker struct {
	root   *os.Root
	isRoot bool // euid == 0: ownership and device nodes are restored
	log    *slog.Logger

	// upper holds the canonical paths written by the current layer and their ancestors: a whiteout
	// in a layer removes only what lower layers made (image-spec layer.md).
	upper map[string]struct{}

	skippedDevices int
	xattrWarned    bool
	// dirModes holds, when not root, the modes of directories created owner-writable so that
	// their entries can still be written (a 0555 directory with files in it); finish applies them.
	dirModes map[string]uint32
}

func newUnpacker(rootfs string, log *slog.Logger) (*unpacker, error) {
	r, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil, err
	}
	return &unpacker{root: r, isRoot: os.Geteuid() == 0, log: log, dirModes: map[string]uint32{}}, nil
}

// finish applies the directory modes deferred while unprivileged, deepest first.
func (u *unpacker) finish() error {
	paths := make([]string, 0, len(u.dirModes))
	for p := range u.dirModes {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool { return strings.Count(paths[i], "/") > strings.Count(paths[j], "/") })
	for _, p := range paths {
		fi, err := u.root.Lstat(p)
		if err != nil || !fi.IsDir() {
			continue // removed or replaced by a later layer
		}
		at, mt := statTimes(fi)
		if err := u.root.Chmod(p, fs.FileMode(u.dirModes[p]&0o777)|modeBits(u.dirModes[p])); err != nil {
			return fmt.Errorf("chmod %q: %w", p, err)
		}
		_ = u.root.Chtimes(p, at, mt)
	}
	return nil
}

// modeBits converts the set-id and sticky bits of a Unix mode to fs.FileMode bits.
func modeBits(m uint32) fs.FileMode {
	var f fs.FileMode
	if m&unix.S_ISUID != 0 {
		f |= fs.ModeSetuid
	}
	if m&unix.S_ISGID != 0 {
		f |= fs.ModeSetgid
	}
	if m&unix.S_ISVTX != 0 {
		f |= fs.ModeSticky
	}
	return f
}

func (u *unpacker) Close() error { return u.root.Close() }

// layer applies one uncompressed layer tar stream.
func (u *unpacker) layer(ctx context.Context, r io.Reader) error {
	u.upper = make(map[string]struct{})
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: reading layer tar: %v", ErrInvalidImage, err)
		}
		if err := u.entry(hdr, tr); err != nil {
			if errors.Is(err, ErrUnsafeLayer) || errors.Is(err, ErrInvalidImage) {
				return err
			}
			return fmt.Errorf("entry %q: %w", truncate(hdr.Name, 200), err)
		}
	}
}

func unsafeEntry(name, format string, args ...any) error {
	return fmt.Errorf("%w: %q: %s", ErrUnsafeLayer, truncate(name, 200), fmt.Sprintf(format, args...))
}

// cleanName checks an archive path and returns it cleaned and relative ("." for the root). An
// absolute path, a ".." component or a NUL byte is refused, not rewritten: a layer that names
// one was not made by an image builder.
func cleanName(name string) (string, error) {
	clean, why := checkName(name)
	if why != "" {
		return "", unsafeEntry(name, "%s", why)
	}
	return clean, nil
}

// checkName is cleanName's rule; why says what is wrong ("" when nothing is).
func checkName(name string) (clean, why string) {
	switch {
	case name == "":
		return "", "empty name"
	case strings.IndexByte(name, 0) >= 0:
		return "", "NUL byte in name"
	case strings.HasPrefix(name, "/"):
		return "", "absolute path"
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", "'..' component"
		}
	}
	return path.Clean(name), ""
}

// resolveDir returns the canonical rootfs path of directory p: symlinks in it are followed when
// their target is relative and stays inside the rootfs; an absolute target or one that climbs
// above the rootfs is refused (followed on the host, it would leave the rootfs). Components that
// do not exist yet are kept as they are (the caller creates them).
func (u *unpacker) resolveDir(entry, p string) (string, error) {
	todo := strings.Split(p, "/")
	cur := "."
	follows := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		if c == "" || c == "." {
			continue
		}
		if c == ".." { // names have none (cleanName): this one comes from a symlink target
			if cur == "." {
				return "", unsafeEntry(entry, "its path goes through a symlink that points outside the rootfs")
			}
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		fi, err := u.root.Lstat(next)
		if errors.Is(err, fs.ErrNotExist) {
			return path.Join(append([]string{next}, todo...)...), nil
		}
		if err != nil {
			return "", err
		}
		switch {
		case fi.IsDir():
			cur = next
		case fi.Mode()&fs.ModeSymlink != 0:
			follows++
			if follows > maxSymlinkFollows {
				return "", unsafeEntry(entry, "too many levels of symlinks in its path")
			}
			target, err := u.root.Readlink(next)
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(target, "/") {
				return "", unsafeEntry(entry, "its path goes through symlink %q -> %q, an absolute target: refused (followed on the host it leaves the rootfs)", next, target)
			}
			todo = append(strings.Split(target, "/"), todo...)
		default:
			return "", fmt.Errorf("%w: %q: %q in its path is not a directory", ErrInvalidImage, truncate(entry, 200), next)
		}
	}
	return cur, nil
}

// entry applies one tar entry.
func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	}
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return unsafeEntry(hdr.Name, "refusing to change the type of the rootfs directory")
		}
		return u.metadata(".", hdr)
	}
	dirName, file := path.Split(name)
	dir, err := u.resolveDir(hdr.Name, dirName)
	if err != nil {
		return err
	}
	p := path.Join(dir, file)

	// Adding or removing an entry changes its directory's times; put them back afterwards, since
	// only what the archive says should be applied (umoci does the same).
	if fi, err := u.root.Lstat(dir); err == nil {
		at, mt := statTimes(fi)
		defer func() { _ = u.root.Chtimes(dir, at, mt) }()
	}

	if strings.HasPrefix(file, whiteoutPrefix) {
		return u.whiteout(hdr.Name, dir, file)
	}

	if err := u.root.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating parent %q: %w", dir, err)
	}
	if fi, err := u.root.Lstat(p); err == nil {
		if !(fi.IsDir() && hdr.Typeflag == tar.TypeDir) {
			if err := u.root.RemoveAll(p); err != nil {
				return fmt.Errorf("replacing %q: %w", p, err)
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}

	d, err := u.root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	dfd := int(d.Fd())

	switch hdr.Typeflag {
	//lint:ignore SA1019 archives written by old tools still mark regular files with TypeRegA
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse, tar.TypeCont:
		fd, err := unix.Openat(dfd, file, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("creating %q: %w", p, err)
		}
		f := os.NewFile(uintptr(fd), p)
		n, err := io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("writing %q: %w", p, err)
		}
		if n != hdr.Size {
			return fmt.Errorf("%w: %q: wrote %d bytes, header says %d", ErrInvalidImage, truncate(hdr.Name, 200), n, hdr.Size)
		}
	case tar.TypeDir:
		if err := unix.Mkdirat(dfd, file, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %q: %w", p, err)
		}
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return fmt.Errorf("%w: %q: symlink with an empty or NUL-bearing target", ErrInvalidImage, truncate(hdr.Name, 200))
		}
		// The target is stored, never followed here: resolveDir refuses to write through it later
		// if it leads outside.
		if err := unix.Symlinkat(hdr.Linkname, dfd, file); err != nil {
			return fmt.Errorf("symlink %q: %w", p, err)
		}
	case tar.TypeLink:
		return u.hardlink(hdr, dfd, file, p)
	case tar.TypeChar, tar.TypeBlock:
		if !u.isRoot {
			u.skippedDevices++
			u.log.Warn("device node skipped: creating device nodes needs root", "path", p)
			return nil
		}
		mode := uint32(unix.S_IFCHR)
		if hdr.Typeflag == tar.TypeBlock {
			mode = unix.S_IFBLK
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(dfd, file, mode|0o600, int(dev)); err != nil {
			if errors.Is(err, unix.EPERM) {
				u.skippedDevices++
				u.log.Warn("device node skipped: mknod not permitted here", "path", p)
				return nil
			}
			return fmt.Errorf("mknod %q: %w", p, err)
		}
	case tar.TypeFifo:
		if err := unix.Mknodat(dfd, file, unix.S_IFIFO|0o600, 0); err != nil {
			return fmt.Errorf("mkfifo %q: %w", p, err)
		}
	default:
		return fmt.Errorf("%w: %q: unsupported tar entry type %q", ErrInvalidImage, truncate(hdr.Name, 200), string(hdr.Typeflag))
	}
	if err := u.metadataAt(dfd, file, p, hdr); err != nil {
		return err
	}
	u.markUpper(p)
	return nil
}

func (u *unpacker) markUpper(p string) {
	for q := p; q != "." && q != "/"; q = path.Dir(q) {
		u.upper[q] = struct{}{}
	}
}

// hardlink links file (in directory fd dfd) to the entry's Linkname, which must already be in
// the rootfs and not be a directory; its parents are resolved like any entry's.
func (u *unpacker) hardlink(hdr *tar.Header, dfd int, file, p string) error {
	target, why := checkName(hdr.Linkname)
	if why != "" {
		return unsafeEntry(hdr.Name, "hard link to %q: %s", truncate(hdr.Linkname, 200), why)
	}
	if target == "." {
		return unsafeEntry(hdr.Name, "hard link to the rootfs directory")
	}
	tdirName, tfile := path.Split(target)
	tdir, err := u.resolveDir(hdr.Name, tdirName)
	if err != nil {
		return err
	}
	tp := path.Join(tdir, tfile)
	fi, err := u.root.Lstat(tp)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %q: hard link to %q, which is not in the rootfs (yet)", ErrInvalidImage, truncate(hdr.Name, 200), truncate(hdr.Linkname, 200))
		}
		return err
	}
	if fi.IsDir() {
		return unsafeEntry(hdr.Name, "hard link to directory %q", tp)
	}
	td, err := u.root.Open(tdir)
	if err != nil {
		return err
	}
	defer td.Close()
	// No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself, never what it points to.
	if err := unix.Linkat(int(td.Fd()), tfile, dfd, file, 0); err != nil {
		return fmt.Errorf("link %q -> %q: %w", p, tp, err)
	}
	// A hard link has no metadata of its own (the tar header may not even carry it).
	u.markUpper(p)
	return nil
}

// headerTimes returns the times to apply: a missing mtime becomes now, a missing atime the mtime.
func headerTimes(hdr *tar.Header) (atime, mtime time.Time) {
	mtime = hdr.ModTime
	if mtime.IsZero() {
		mtime = time.Now()
	}
	atime = hdr.AccessTime
	if atime.IsZero() {
		atime = mtime
	}
	return atime, mtime
}

// metadataAt applies owner (when root), mode, xattrs and times to file in directory dfd, never
// following a symlink at file.
func (u *unpacker) metadataAt(dfd int, file, p string, hdr *tar.Header) error {
	isLink := hdr.Typeflag == tar.TypeSymlink
	if u.isRoot {
		if err := unix.Fchownat(dfd, file, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("chown %q: %w", p, err)
		}
	}
	// After chown, which clears set-id bits. Symlinks have no mode of their own.
	if !isLink {
		mode := uint32(hdr.Mode & 0o7777)
		if hdr.Typeflag == tar.TypeDir && !u.isRoot {
			if mode&0o700 != 0o700 {
				u.dirModes[p] = mode
				mode |= 0o700
			} else {
				delete(u.dirModes, p)
			}
		}
		if err := unix.Fchmodat(dfd, file, mode, 0); err != nil {
			return fmt.Errorf("chmod %q: %w", p, err)
		}
	}
	if err := u.xattrs(fmt.Sprintf("/proc/self/fd/%d/%s", dfd, file), p, hdr); err != nil {
		return err
	}
	at, mt := headerTimes(hdr)
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	if err := unix.UtimesNanoAt(dfd, file, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times of %q: %w", p, err)
	}
	return nil
}

// metadata applies a directory entry's metadata to an existing directory (the rootfs itself).
func (u *unpacker) metadata(p string, hdr *tar.Header) error {
	d, err := u.root.Open(p)
	if err != nil {
		return err
	}
	defer d.Close()
	fd := int(d.Fd())
	if u.isRoot {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown %q: %w", p, err)
		}
	}
	if err := unix.Fchmod(fd, uint32(hdr.Mode&0o7777)); err != nil {
		return fmt.Errorf("chmod %q: %w", p, err)
	}
	if err := u.xattrs("/proc/self/fd/"+strconv.Itoa(fd), p, hdr); err != nil {
		return err
	}
	at, mt := headerTimes(hdr)
	return u.root.Chtimes(p, at, mt)
}

// xattrs sets the entry's extended attributes (PAX SCHILY.xattr.*). security.selinux is left to
// the runtime's labelling. A file system without xattrs, or EPERM when not root, is noted once and
// skipped.
func (u *unpacker) xattrs(procPath, p string, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok || attr == "security.selinux" {
			continue
		}
		err := unix.Lsetxattr(procPath, attr, []byte(v), 0)
		if err == nil {
			continue
		}
		if errors.Is(err, unix.ENOTSUP) || (!u.isRoot && errors.Is(err, unix.EPERM)) {
			if !u.xattrWarned {
				u.xattrWarned = true
				u.log.Warn("extended attributes not restored (further ones are skipped silently)", "path", p, "xattr", attr, "err", err)
			}
			continue
		}
		return fmt.Errorf("setxattr %q on %q: %w", attr, p, err)
	}
	return nil
}

// whiteout applies ".wh.NAME" (remove NAME) or ".wh..wh..opq" (empty dir) from lower layers.
func (u *unpacker) whiteout(entry, dir, file string) error {
	var target string
	opaque := false
	switch {
	case file == whiteoutOpaque:
		target, opaque = dir, true
	case strings.HasPrefix(file, whiteoutMeta):
		u.log.Debug("whiteout meta entry ignored", "entry", entry)
		return nil
	default:
		n := strings.TrimPrefix(file, whiteoutPrefix)
		if n == "" || n == "." {
			return fmt.Errorf("%w: %q: whiteout names nothing", ErrInvalidImage, truncate(entry, 200))
		}
		target = path.Join(dir, n)
	}
	if _, err := u.root.Lstat(target); err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		return err
	}
	return u.purge(target, opaque)
}

// purge removes p and everything under it that the current layer did not write; keep keeps p
// itself (an opaque directory).
func (u *unpacker) purge(p string, keep bool) error {
	if _, inUpper := u.upper[p]; !inUpper && !keep {
		return u.root.RemoveAll(p)
	}
	fi, err := u.root.Lstat(p)
	if err != nil || !fi.IsDir() {
		return err
	}
	d, err := u.root.Open(p)
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := u.purge(path.Join(p, n), false); err != nil {
			return err
		}
	}
	return nil
}

func statTimes(fi fs.FileInfo) (atime, mtime time.Time) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fi.ModTime(), fi.ModTime()
	}
	return time.Unix(st.Atim.Sec, st.Atim.Nsec), time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
}
