package bundle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation/internal/callio"
)

// A bundle is untrusted: its rootfs/ may be a symlink to a host directory, its config.json's
// root.path may run through a symlinked parent, config.json itself may be a symlink or a FIFO.
// A textual check of the path ("inside the bundle") says nothing about where the kernel takes it,
// and the crun backend ran such a bundle with the host directory as its root. So every path the
// sandbox takes from inside a tool folder is resolved once against the folder with the kernel's
// confinement (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS; a walk with O_NOFOLLOW per component
// on kernels without openat2), refusing symlinks and anything outside, and the resolved path is
// what every backend gets. The tool folder itself (call.Dir) is confined inside the tools root by
// the catalog and taken as given here.

// MaxConfigBytes bounds a bundle's config.json.
const MaxConfigBytes = 1 << 20

// resolveFlags is the confinement: beneath the folder, no symlinks (magic links included).
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// OpenBeneath opens rel (a local path) below dir, refusing symlinks in any component and any
// escape. flags are open(2) flags (O_NOFOLLOW and O_CLOEXEC are added).
func OpenBeneath(dir, rel string, flags int) (*os.File, error) {
	rel = filepath.Clean(rel)
	if !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("%q is not inside the tool folder", rel)
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	flags |= unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := openat2(dfd, rel, flags)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), filepath.Join(dir, rel)), nil
}

// openat2 is unix.Openat2 with resolveFlags, or where the kernel lacks it (before 5.6) a walk of
// rel's components, each opened with O_NOFOLLOW from the one before ("..", absent from a
// cleaned local path, is refused too).
func openat2(dfd int, rel string, flags int) (int, error) {
	fd, err := unix.Openat2(dfd, rel, &unix.OpenHow{Flags: uint64(flags), Resolve: resolveFlags})
	if !errors.Is(err, unix.ENOSYS) {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return -1, fmt.Errorf("%q runs through a symlink or leaves the tool folder (%w)", rel, err)
		}
		return fd, err
	}
	return walkBeneath(dfd, rel, flags)
}

// walkBeneath opens rel below dfd one component at a time with O_NOFOLLOW: openat2's
// confinement on kernels without it.
func walkBeneath(dfd int, rel string, flags int) (int, error) {
	parts := strings.Split(rel, "/")
	cur := dfd
	defer func() {
		if cur != dfd {
			unix.Close(cur)
		}
	}()
	for i, p := range parts {
		if p == ".." {
			return -1, fmt.Errorf("%q leaves the tool folder", rel)
		}
		f := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
		if i == len(parts)-1 {
			f = flags
		}
		next, err := unix.Openat(cur, p, f, 0)
		if errors.Is(err, unix.ELOOP) || (errors.Is(err, unix.ENOTDIR) && i < len(parts)-1) {
			return -1, fmt.Errorf("%q runs through a symlink (%w)", rel, err)
		}
		if err != nil {
			return -1, err
		}
		if cur != dfd {
			unix.Close(cur)
		}
		cur = next
	}
	fd := cur
	cur = dfd // the caller owns fd now
	return fd, nil
}

// ReadConfig reads dir/config.json: a regular file (not a symlink, FIFO or device), at
// most MaxConfigBytes.
func ReadConfig(dir string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer.
	f, err := OpenBeneath(dir, "config.json", unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return nil, Error(dir, "config.json", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, Error(dir, "config.json", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, Error(dir, "config.json", fmt.Errorf("not a regular file (%s)", fi.Mode().Type()))
	}
	if fi.Size() > MaxConfigBytes {
		return nil, Error(dir, "config.json", fmt.Errorf("%d bytes, the limit is %d", fi.Size(), MaxConfigBytes))
	}
	b, err := callio.ReadBounded(f, MaxConfigBytes)
	if err != nil {
		return nil, Error(dir, "config.json", err)
	}
	return b, nil
}

// ResolveRoot resolves a bundle's root (an absolute path textually inside dir, as ocispec.Harden
// returns it) against dir with the confinement above and returns the directory's real path: no
// symlink in any of its components, so every backend that is handed it reaches the same
// directory.
func ResolveRoot(dir, root string) (string, error) {
	rel, err := filepath.Rel(dir, root)
	if err != nil || !filepath.IsLocal(rel) {
		return "", Error(dir, "root.path", fmt.Errorf("%q is outside the bundle", root))
	}
	f, err := OpenBeneath(dir, rel, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return "", Error(dir, "root.path", err)
	}
	defer f.Close()
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		return "", Error(dir, "root.path", err)
	}
	if !filepath.IsAbs(real) {
		// "/proc/self/fd/N" names something the kernel cannot print as a path (a deleted
		// directory, another mount namespace's).
		return "", Error(dir, "root.path", fmt.Errorf("%q resolves to %q", root, real))
	}
	return real, nil
}

// Read reads the bundle in dir (absolute): config.json (a regular file, bounded) and its process,
// and the root resolved beneath dir without symlinks. Errors match isolation.ErrInvalidTool.
func Read(dir string) (root string, p Process, err error) {
	raw, err := ReadConfig(dir)
	if err != nil {
		return "", p, err
	}
	root, p, err = ParseConfig(raw, dir)
	if err != nil {
		return "", p, Error(dir, "config.json", err)
	}
	root, err = ResolveRoot(dir, root)
	return root, p, err
}
