// Package tarball turns a tool folder into a deterministic tar (its SHA-256 is the tool's digest
// in the fleet) and unpacks such a tar, which arrives from the network and is untrusted, into a
// fresh folder: no path escapes, no hard links, devices or FIFOs, symlinks only where they
// cannot lead a host reader out of the folder, bounded size, entries and depth.
package tarball

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Limits bound what Extract accepts (and what Write produces, so that a published folder can be
// unpacked everywhere).
type Limits struct {
	// MaxBytes bounds the sum of the files' sizes (default 1 GiB).
	MaxBytes int64
	// MaxEntries bounds the number of entries (default 200,000).
	MaxEntries int
	// MaxDepth bounds a path's number of components (default 64).
	MaxDepth int
}

// Defaults.
const (
	DefaultMaxBytes   = 1 << 30
	DefaultMaxEntries = 200_000
	DefaultMaxDepth   = 64
	maxPathLen        = 4096
)

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	return l
}

// ErrInvalid: the folder or the tar breaks a rule (the message names the entry).
var ErrInvalid = errors.New("invalid tool archive")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// epoch is every entry's mtime: the digest depends on content, names and modes only.
var epoch = time.Unix(0, 0).UTC()

// Write writes dir as a deterministic tar to w: entries in lexical order, uid/gid 0, no names,
// mtime 0, modes reduced to their read and execute bits (no write, setuid, setgid or sticky bit). Directories,
// regular files and symlinks only (a hard-linked file is written as a file).
func Write(w io.Writer, dir string, lim Limits) error {
	lim = lim.withDefaults()
	tw := tar.NewWriter(w)
	var total int64
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := filepath.ToSlash(rel)
		if n++; n > lim.MaxEntries {
			return invalid("more than %d entries", lim.MaxEntries)
		}
		if depth(name) > lim.MaxDepth {
			return invalid("%s: deeper than %d levels", name, lim.MaxDepth)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		// No write bits either: the folder is unpacked read-only, and its digest must not change.
		hdr := &tar.Header{Name: name, Mode: int64(fi.Mode().Perm() &^ 0o222), ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case fi.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		case fi.Mode().IsRegular():
			hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
			if total += fi.Size(); total > lim.MaxBytes {
				return invalid("more than %d bytes", lim.MaxBytes)
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := checkLink(name, target); err != nil {
				return err
			}
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, target
		default:
			return invalid("%s: %s is neither a file, a directory nor a symlink", name, fi.Mode().Type())
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.CopyN(tw, f, hdr.Size)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w (did it change while being archived?)", name, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// Digest is the SHA-256 (64 hex digits) of dir's deterministic tar, and the tar's size.
func Digest(dir string, lim Limits) (string, int64, error) {
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := Write(cw, dir, lim); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func depth(name string) int { return strings.Count(strings.Trim(name, "/"), "/") + 1 }

// checkLink allows a symlink whose target stays inside the folder, read as a path relative to the
// link's directory; an absolute target only under rootfs/ (an OCI bundle's root, where the
// container resolves it inside its own root; the host never follows links there: the catalog and
// the tiers open through os.Root or RESOLVE_BENEATH).
func checkLink(name, target string) error {
	if target == "" || len(target) > maxPathLen || strings.ContainsRune(target, 0) {
		return invalid("%s: bad symlink target", name)
	}
	if path.IsAbs(target) {
		if strings.HasPrefix(name, "rootfs/") {
			return nil
		}
		return invalid("%s: symlink to the absolute path %q (allowed only under rootfs/)", name, target)
	}
	joined := path.Join(path.Dir(name), target)
	if joined == ".." || strings.HasPrefix(joined, "../") {
		return invalid("%s: symlink %q leads out of the folder", name, target)
	}
	return nil
}

// Extract unpacks the tar from r into dest, which must not exist yet (its parent must), and
// leaves it read-only (no write bit anywhere). Any rule broken is an error matching ErrInvalid and
// dest is removed. Writes go through an os.Root, so no entry lands outside dest whatever earlier
// entries made.
func Extract(r io.Reader, dest string, lim Limits) (err error) {
	lim = lim.withDefaults()
	if err := os.Mkdir(dest, 0o700); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			RemoveAll(dest)
		}
	}()
	root, err := os.OpenRoot(dest)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var total int64
	dirs := map[string]fs.FileMode{} // directory entries' modes, applied once everything is written
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return invalid("reading the tar: %v", err)
		}
		if n >= lim.MaxEntries {
			return invalid("more than %d entries", lim.MaxEntries)
		}
		name, err := cleanName(hdr.Name, lim)
		if err != nil {
			return err
		}
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o700); err != nil {
				return invalid("%s: %v", name, err)
			}
		}
		perm := fs.FileMode(hdr.Mode).Perm() &^ 0o222
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return invalid("%s: %v", name, err)
			}
			if fi, err := root.Lstat(name); err != nil || !fi.IsDir() {
				return invalid("%s: a directory entry where something else already is", name)
			}
			dirs[name] = perm | 0o500
		case tar.TypeReg:
			if hdr.Size < 0 || hdr.Size > lim.MaxBytes-total {
				return invalid("%s: more than %d bytes in all", name, lim.MaxBytes)
			}
			total += hdr.Size
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return invalid("%s: %v", name, err)
			}
			_, err = io.CopyN(f, tr, hdr.Size)
			if err == nil {
				err = f.Chmod(perm | 0o400)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return invalid("%s: %v", name, err)
			}
		case tar.TypeSymlink:
			if err := checkLink(name, hdr.Linkname); err != nil {
				return err
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return invalid("%s: %v", name, err)
			}
		default:
			return invalid("%s: entry type %q is not allowed (directories, regular files and symlinks only)", name, hdr.Typeflag)
		}
	}
	// Read-only from here: every directory (implicit parents 0555) loses its write bit, deepest
	// first so that a parent stays writable until its children are done.
	var all []string
	filepath.WalkDir(dest, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != dest {
			all = append(all, p)
		}
		return nil
	})
	sort.Sort(sort.Reverse(sort.StringSlice(all)))
	for _, p := range all {
		rel, _ := filepath.Rel(dest, p)
		mode, ok := dirs[filepath.ToSlash(rel)]
		if !ok {
			mode = 0o555
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
	}
	return os.Chmod(dest, 0o555)
}

// cleanName checks an entry name: relative, local, no "." or ".." components, no NUL, within the
// length and depth bounds. It returns the name without a trailing slash.
func cleanName(name string, lim Limits) (string, error) {
	n := strings.TrimSuffix(name, "/")
	switch {
	case n == "" || len(n) > maxPathLen || strings.ContainsRune(n, 0) || strings.Contains(n, "\\"):
		return "", invalid("entry name %q", trunc(name))
	case path.IsAbs(n) || path.Clean(n) != n || !filepath.IsLocal(n):
		return "", invalid("entry %q is not a clean relative path inside the folder", trunc(name))
	case depth(n) > lim.MaxDepth:
		return "", invalid("entry %q is deeper than %d levels", trunc(name), lim.MaxDepth)
	}
	for _, c := range strings.Split(n, "/") {
		if c == "." || c == ".." {
			return "", invalid("entry %q", trunc(name))
		}
	}
	return n, nil
}

func trunc(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}

// RemoveAll removes a folder Extract made read-only: it gives directories their write bit back
// first (without following symlinks).
func RemoveAll(dir string) error {
	var ds []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			ds = append(ds, p)
		}
		return nil
	})
	sort.Strings(ds)
	for _, d := range ds {
		os.Chmod(d, 0o700)
	}
	return os.RemoveAll(dir)
}
