package catalog

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/axocoatl/isolation"
)

// Limits on what a tool folder may make the catalog read. Every file of a tool folder is opened
// through an os.Root (openat-based: no symlink or ".." leaves the folder), without blocking (a
// FIFO cannot stall a lookup) and must be a regular file no larger than its limit, so one broken
// or hostile folder cannot hang, exhaust or escape the catalog, nor block the other tools.
const (
	// MaxManifestBytes bounds tool.json (input_schema included).
	MaxManifestBytes = 1 << 20
)

// invalidTool is the error of a broken tool folder or manifest: the operator's fault.
func invalidTool(name, format string, args ...any) *isolation.Error {
	return &isolation.Error{Kind: isolation.ErrInvalidTool, Tool: name, Message: fmt.Sprintf(format, args...)}
}

// openFolder opens tool folder name beneath root and returns it with its resolved absolute path
// (root joined with the folder's real location beneath it). A folder entry that is a symlink is
// followed only while it stays inside root.
func openFolder(root *os.Root, rootPath, name string) (*os.Root, string, error) {
	fi, err := root.Lstat(name)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: name, Message: fmt.Sprintf("no tool %q in the tools root", name)}
		}
		return nil, "", invalidTool(name, "tool folder: %v", err)
	}
	if !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 {
		return nil, "", &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: name, Message: fmt.Sprintf("no tool %q in the tools root (its entry is not a folder)", name)}
	}
	dir, err := root.OpenRoot(name)
	if err != nil {
		if fi, serr := root.Stat(name); serr == nil && !fi.IsDir() {
			// A symlink to a file inside the root: not a tool folder, like a plain file.
			return nil, "", &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: name, Message: fmt.Sprintf("no tool %q in the tools root (its entry is not a folder)", name)}
		}
		return nil, "", invalidTool(name, "tool folder %s is not a folder inside the tools root: %v", filepath.Join(rootPath, name), err)
	}
	rel, err := resolvedBeneath(root, dir, name, fi)
	if err != nil {
		dir.Close()
		return nil, "", invalidTool(name, "tool folder %s: %v", filepath.Join(rootPath, name), err)
	}
	return dir, filepath.Join(rootPath, rel), nil
}

// readRegular reads file rel of a tool folder: opened without following anything out of the
// folder, without blocking, refused unless a regular file of at most max bytes. It returns the
// file's identity as of the open (taken before reading: an edit during the read makes the next
// lookup parse it again rather than cache a stale version).
func readRegular(dir *os.Root, rel string, max int64) ([]byte, fileStamp, error) {
	f, err := openInFolder(dir, rel)
	if err != nil {
		return nil, fileStamp{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fileStamp{}, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fileStamp{}, fmt.Errorf("%s is not a regular file but %s", rel, fileKind(fi.Mode()))
	}
	if fi.Size() > max {
		return nil, fileStamp{}, fmt.Errorf("%s is %d bytes, over the limit of %d", rel, fi.Size(), max)
	}
	st := stampFromInfo(fi)
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fileStamp{}, err
	}
	if int64(len(b)) > max {
		return nil, fileStamp{}, fmt.Errorf("%s grew over the limit of %d bytes while being read", rel, max)
	}
	return b, st, nil
}

// statRegular checks that rel is a regular file inside the folder (opened, never read: an
// entrypoint can be large) and returns its resolved path relative to the folder and its identity.
func statRegular(dir *os.Root, rel string) (string, fileStamp, error) {
	f, err := openInFolder(dir, rel)
	if err != nil {
		return "", fileStamp{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fileStamp{}, err
	}
	if !fi.Mode().IsRegular() {
		return "", fileStamp{}, fmt.Errorf("%q is not a regular file but %s", rel, fileKind(fi.Mode()))
	}
	real, err := resolvedFile(dir, f, rel)
	if err != nil {
		return "", fileStamp{}, err
	}
	return real, stampFromInfo(fi), nil
}

// openInFolder opens rel for reading without following anything out of the folder and without
// blocking (O_NONBLOCK: opening a FIFO for reading would wait for a writer).
func openInFolder(dir *os.Root, rel string) (*os.File, error) {
	f, err := dir.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		if fi, lerr := dir.Lstat(rel); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return nil, fmt.Errorf("%s is a symlink leading out of the tool folder: %w", rel, err)
		}
	}
	return f, err
}

func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return "a special file (" + m.Type().String() + ")"
}

// isBundleIn reports whether the folder holds an OCI bundle: config.json a regular file and
// rootfs/ a directory, both inside the folder (deeper bundle checks are the Oci tier's).
func isBundleIn(dir *os.Root) bool {
	fi, err := dir.Stat("config.json")
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	fi, err = dir.Stat("rootfs")
	return err == nil && fi.IsDir()
}
