// Package callio holds what the tiers share to carry out a call's I/O protocol: reading the
// output file and streams within bounds, and the path checks a tier runs before it builds paths.
// Not public API: a Sandbox implemented outside this module reads its output its own way.
package callio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// ReadOutputFile reads a tool's output file, refusing more than max bytes. A missing file is
// (nil, nil): the executor reports isolation.ErrOutputMissing. A non-regular file (a symlink a tool
// planted, a FIFO) is refused without being followed.
func ReadOutputFile(path string, max int64) ([]byte, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, isolation.Errorf(isolation.ErrOutputInvalid, "%s is not a regular file (%s)", sandbox.OutputFile, fi.Mode().Type())
	}
	if fi.Size() > max {
		return nil, isolation.Errorf(isolation.ErrOutputTooLarge, "%s is %d bytes, the limit is %d", sandbox.OutputFile, fi.Size(), max)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|noFollow, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadBounded(f, max)
}

// ReadBounded reads all of r, failing with isolation.ErrOutputTooLarge past max bytes.
func ReadBounded(r io.Reader, max int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, isolation.Errorf(isolation.ErrOutputTooLarge, "%s is over the limit of %d bytes", sandbox.OutputFile, max)
	}
	return b, nil
}

// TailBuffer is an io.Writer keeping only the last Max bytes written. Safe for concurrent use.
type TailBuffer struct {
	Max int

	mu        sync.Mutex // protects buf and truncated
	buf       []byte
	truncated bool
}

// NewTailBuffer returns a TailBuffer keeping max bytes.
func NewTailBuffer(max int) *TailBuffer { return &TailBuffer{Max: max} }

func (t *TailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) >= t.Max {
		t.buf = append(t.buf[:0], p[len(p)-t.Max:]...)
		t.truncated = true
		return n, nil
	}
	if over := len(t.buf) + len(p) - t.Max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.truncated = true
	}
	t.buf = append(t.buf, p...)
	return n, nil
}

// String returns the kept tail, prefixed with "…" when earlier bytes were dropped.
func (t *TailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.truncated {
		return "…" + string(t.buf)
	}
	return string(t.buf)
}

// CheckCallPaths is a defensive check a tier may run before it builds paths from a call.
func CheckCallPaths(c sandbox.Call) error {
	if c.Dir == "" || c.Dir[0] != '/' {
		return fmt.Errorf("call for %q has a relative tool dir %q", c.Tool, c.Dir)
	}
	return nil
}
