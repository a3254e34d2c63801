package vmimage

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// cpioWriter writes the newc format the kernel unpacks as an initramfs. Every entry is owned by
// root; hard links are stored as separate files.
type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
	n   int64
}

func (c *cpioWriter) write(p []byte) error {
	k, err := c.w.Write(p)
	c.n += int64(k)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *cpioWriter) entry(name string, mode uint32, rdevMajor, rdevMinor uint32, data []byte, r io.Reader, size int64) error {
	c.ino++
	if data != nil {
		size = int64(len(data))
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if data != nil {
		if err := c.write(data); err != nil {
			return err
		}
	} else if r != nil {
		k, err := io.Copy(c.w, r)
		c.n += k
		if err != nil {
			return err
		}
		if k != size {
			return fmt.Errorf("cpio: %s changed size while archived", name)
		}
	}
	return c.pad()
}

// sourceless returns the compiled form of the stdlib module py (__pycache__/NAME.cpython-311.pyc,
// written by compilePython), or "" when there is none. In the initramfs it replaces the source as
// NAME.pyc beside where NAME.py was: Python loads such a "legacy" .pyc without looking for a source
// (tracebacks through the stdlib then show no source lines; the tool's own files are unaffected).
func sourceless(py string) string {
	dir, name := filepath.Split(py)
	pyc := filepath.Join(dir, "__pycache__", strings.TrimSuffix(name, ".py")+pycTag)
	if fi, err := os.Stat(pyc); err == nil && fi.Mode().IsRegular() {
		return pyc
	}
	return ""
}

// writeInitramfs archives root (a directory) plus /dev/console into path.
func writeInitramfs(root, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	c := &cpioWriter{w: bufio.NewWriterSize(f, 1<<20)}
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		// The stdlib goes in as bytecode only (see sourceless): half the bytes to unpack per boot.
		inPy := strings.HasPrefix(rel, pyDir+"/")
		if inPy && d.IsDir() && d.Name() == "__pycache__" {
			return filepath.SkipDir
		}
		if inPy && d.Type().IsRegular() && strings.HasSuffix(rel, ".py") {
			if pyc := sourceless(p); pyc != "" {
				src, err := os.Open(pyc)
				if err != nil {
					return err
				}
				defer src.Close()
				fi, err := src.Stat()
				if err != nil {
					return err
				}
				return c.entry(rel+"c", syscall.S_IFREG|0o644, 0, 0, nil, src, fi.Size())
			}
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		perm := uint32(fi.Mode().Perm())
		if fi.Mode()&fs.ModeSetuid != 0 {
			perm |= syscall.S_ISUID
		}
		if fi.Mode()&fs.ModeSticky != 0 {
			perm |= syscall.S_ISVTX
		}
		switch {
		case fi.IsDir():
			return c.entry(rel, syscall.S_IFDIR|perm, 0, 0, nil, nil, 0)
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return c.entry(rel, syscall.S_IFLNK|0o777, 0, 0, []byte(t), nil, 0)
		case fi.Mode().IsRegular():
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			return c.entry(rel, syscall.S_IFREG|perm, 0, 0, nil, src, fi.Size())
		default:
			return nil // device nodes and sockets have no place in the image
		}
	})
	if err != nil {
		return err
	}
	// The kernel opens /dev/console for PID 1's stdio before anything is mounted.
	if _, err := os.Stat(filepath.Join(root, "dev")); err != nil {
		if err := c.entry("dev", syscall.S_IFDIR|0o755, 0, 0, nil, nil, 0); err != nil {
			return err
		}
	}
	if err := c.entry("dev/console", syscall.S_IFCHR|0o600, 5, 1, nil, nil, 0); err != nil {
		return err
	}
	if err := c.entry("TRAILER!!!", 0, 0, 0, nil, nil, 0); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	return f.Close()
}
