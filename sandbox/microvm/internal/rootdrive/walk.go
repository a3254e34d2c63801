package rootdrive

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"syscall"
)

// Bounds on a tree the cache builds a drive from. A rootfs is untrusted: these keep a walk (and the
// drive it becomes) finite. They are far above any real image (python:3.12-slim: ~4,700 entries,
// 130 MB).
const (
	// MaxEntries bounds the entries of a tree.
	MaxEntries = 1 << 20
	// MaxDepth bounds its nesting.
	MaxDepth = 256
	// MaxBytes bounds the sum of its regular files' sizes.
	MaxBytes = 16 << 30
)

// ErrTree is the class of errors about a tree that cannot become a drive (over a bound, an
// unreadable entry); the sandbox reports them as the tool's (isolation.ErrInvalidTool).
var ErrTree = errors.New("rootfs cannot become a drive")

// digestVersion changes whenever the digests' input or the drive's layout change, so that drives
// built by an older version are not taken for current ones.
const digestVersion = "axocoatl-rootdrive-1\x00"

// treeStats is what sizing a drive needs.
type treeStats struct {
	entries int64 // every entry but the root
	bytes   int64 // regular files' sizes
	blocks  int64 // 4 KiB blocks the entries need, roughly
	top     map[string]fs.FileMode
}

// walk visits every entry below root (os.Root: nothing outside it is reachable, symlinks are
// never followed, only recorded), in lexical order, without recursion. For each entry it feeds h
// with its path, type, permissions, owner and size and — with content — its data's SHA-256 (else
// its inode, change and modification times: the cheap identity of this version of the file).
func walk(root *os.Root, h hash.Hash, content bool) (treeStats, error) {
	st := treeStats{top: map[string]fs.FileMode{}}
	io.WriteString(h, digestVersion)
	type dir struct {
		rel   string
		depth int
	}
	stack := []dir{{".", 0}}
	var buf [8]byte
	num := func(v uint64) {
		binary.LittleEndian.PutUint64(buf[:], v)
		h.Write(buf[:])
	}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		f, err := root.Open(d.rel)
		if err != nil {
			return st, fmt.Errorf("%w: %v", ErrTree, err)
		}
		names, err := f.Readdirnames(-1)
		if err != nil {
			f.Close()
			return st, fmt.Errorf("%w: %s: %v", ErrTree, d.rel, err)
		}
		slices.Sort(names)
		var sub []dir
		for _, n := range names {
			rel := path.Join(d.rel, n)
			st.entries++
			if st.entries > MaxEntries {
				return st, fmt.Errorf("%w: more than %d entries", ErrTree, MaxEntries)
			}
			fi, err := lstatIn(root, f, rel, n)
			if err != nil {
				f.Close()
				return st, fmt.Errorf("%w: %s: %v", ErrTree, rel, err)
			}
			sys, ok := fi.Sys().(*syscall.Stat_t)
			if !ok {
				return st, fmt.Errorf("%w: %s: no stat", ErrTree, rel)
			}
			if d.depth == 0 {
				st.top[n] = fi.Mode()
			}
			io.WriteString(h, rel)
			h.Write([]byte{0})
			num(uint64(sys.Mode))
			num(uint64(sys.Uid))
			num(uint64(sys.Gid))
			num(uint64(sys.Rdev))
			num(uint64(sys.Nlink))
			num(uint64(fi.Size()))
			if !content {
				num(sys.Ino)
				num(uint64(fi.ModTime().UnixNano()))
				num(uint64(ctime(sys)))
			}
			switch {
			case fi.IsDir():
				if d.depth+1 > MaxDepth {
					f.Close()
					return st, fmt.Errorf("%w: %s: more than %d levels", ErrTree, rel, MaxDepth)
				}
				sub = append(sub, dir{rel, d.depth + 1})
				st.blocks++
			case fi.Mode().IsRegular():
				st.bytes += fi.Size()
				if st.bytes > MaxBytes {
					f.Close()
					return st, fmt.Errorf("%w: more than %d bytes", ErrTree, int64(MaxBytes))
				}
				st.blocks += (fi.Size() + 4095) / 4096
				if content {
					if err := hashFile(root, rel, h); err != nil {
						f.Close()
						return st, err
					}
				}
			case fi.Mode()&fs.ModeSymlink != 0:
				if content {
					t, err := root.Readlink(rel)
					if err != nil {
						f.Close()
						return st, fmt.Errorf("%w: %s: %v", ErrTree, rel, err)
					}
					io.WriteString(h, t)
					h.Write([]byte{0})
				}
				if fi.Size() > 59 { // longer targets do not fit in the inode
					st.blocks++
				}
			}
		}
		f.Close()
		// Directory entries cost ~(8 + name) bytes each.
		st.blocks += int64(len(names)) * 40 / 4096
		for i := len(sub) - 1; i >= 0; i-- {
			stack = append(stack, sub[i])
		}
	}
	return st, nil
}

// hashFile feeds h with the SHA-256 of rel's data. The file is opened non-blocking and checked to
// be regular again once open (it may have been replaced since its Lstat).
func hashFile(root *os.Root, rel string, h hash.Hash) error {
	f, err := root.OpenFile(rel, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrTree, rel, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s changed while read", ErrTree, rel)
	}
	fh := sha256.New()
	if _, err := io.Copy(fh, f); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrTree, rel, err)
	}
	h.Write(fh.Sum(nil))
	return nil
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }
