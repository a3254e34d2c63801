package wasm

import (
	"io"
	"io/fs"
	"sync"
	"time"

	experimentalsys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/sys"

	"github.com/axocoatl/isolation/sandbox"
)

// The guest's files are written as io/fs files (with io.Seeker, io.WriterAt, ...) and handed to
// wazero through its fs.FS adapter, which maps each optional interface to the WASI operation.

// callFS is the guest's /axocoatl for one call, in memory: input.json (read-only) and
// output.json, the only file the guest may create. Writes past maxOutput fail (EIO) and mark the
// call's output as too large, so a guest can never make the host hold more than maxOutput bytes.
// Nothing of the host filesystem is reachable through it. Safe for concurrent use.
type callFS struct {
	experimentalsys.UnimplementedFS

	input     []byte
	maxOutput int64
	now       int64

	mu sync.Mutex // protects output, hasOutput, overflow
	// output is output.json's content; hasOutput whether the guest created it.
	output    []byte
	hasOutput bool
	overflow  bool
}

const (
	inoRoot = iota + 1
	inoInput
	inoOutput
)

func newCallFS(input []byte, maxOutput int64, now int64) *callFS {
	return &callFS{input: input, maxOutput: maxOutput, now: now}
}

// result returns output.json (nil when the guest created none) and whether a write overflowed.
func (f *callFS) result() ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.hasOutput {
		return nil, f.overflow
	}
	if f.output == nil {
		return []byte{}, f.overflow
	}
	return f.output, f.overflow
}

func (f *callFS) stat(ino sys.Inode) sys.Stat_t {
	st := sys.Stat_t{Ino: ino, Nlink: 1, Atim: f.now, Mtim: f.now, Ctim: f.now}
	switch ino {
	case inoRoot:
		st.Mode, st.Nlink = fs.ModeDir|0o755, 2
	case inoInput:
		st.Mode, st.Size = 0o444, int64(len(f.input))
	case inoOutput:
		f.mu.Lock()
		st.Mode, st.Size = 0o644, int64(len(f.output))
		f.mu.Unlock()
	}
	return st
}

func (f *callFS) lookup(path string) (sys.Inode, experimentalsys.Errno) {
	switch path {
	case "", ".", "/":
		return inoRoot, 0
	case sandbox.InputFile:
		return inoInput, 0
	case sandbox.OutputFile:
		f.mu.Lock()
		ok := f.hasOutput
		f.mu.Unlock()
		if ok {
			return inoOutput, 0
		}
	}
	return 0, experimentalsys.ENOENT
}

func (f *callFS) OpenFile(path string, flag experimentalsys.Oflag, _ fs.FileMode) (experimentalsys.File, experimentalsys.Errno) {
	acc := flag & (experimentalsys.O_RDONLY | experimentalsys.O_RDWR | experimentalsys.O_WRONLY)
	writing := acc != experimentalsys.O_RDONLY
	switch path {
	case "", ".", "/":
		if writing {
			return nil, experimentalsys.EISDIR
		}
		return adapt(&dirFile{fs: f}, flag)
	case sandbox.InputFile:
		if writing || flag&experimentalsys.O_TRUNC != 0 {
			return nil, experimentalsys.EROFS
		}
		if flag&experimentalsys.O_DIRECTORY != 0 {
			return nil, experimentalsys.ENOTDIR
		}
		return adapt(&inputFile{fs: f}, flag)
	case sandbox.OutputFile:
		if flag&experimentalsys.O_DIRECTORY != 0 {
			return nil, experimentalsys.ENOTDIR
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if !f.hasOutput {
			if flag&experimentalsys.O_CREAT == 0 {
				return nil, experimentalsys.ENOENT
			}
			f.hasOutput = true
		} else if flag&(experimentalsys.O_CREAT|experimentalsys.O_EXCL) == experimentalsys.O_CREAT|experimentalsys.O_EXCL {
			return nil, experimentalsys.EEXIST
		}
		if flag&experimentalsys.O_TRUNC != 0 && writing {
			f.output = f.output[:0]
		}
		return adapt(&outputFile{fs: f, read: acc != experimentalsys.O_WRONLY, write: writing, append: flag&experimentalsys.O_APPEND != 0}, flag)
	}
	if flag&experimentalsys.O_CREAT != 0 {
		// Only output.json may be created: nothing else can fill the host's memory.
		return nil, experimentalsys.EACCES
	}
	return nil, experimentalsys.ENOENT
}

func (f *callFS) Lstat(path string) (sys.Stat_t, experimentalsys.Errno) { return f.Stat(path) }

func (f *callFS) Stat(path string) (sys.Stat_t, experimentalsys.Errno) {
	ino, errno := f.lookup(path)
	if errno != 0 {
		return sys.Stat_t{}, errno
	}
	return f.stat(ino), 0
}

func (f *callFS) Unlink(path string) experimentalsys.Errno {
	if path != sandbox.OutputFile {
		return experimentalsys.EACCES
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.hasOutput {
		return experimentalsys.ENOENT
	}
	f.hasOutput, f.output = false, nil
	return 0
}

func (f *callFS) Mkdir(string, fs.FileMode) experimentalsys.Errno    { return experimentalsys.EACCES }
func (f *callFS) Rename(string, string) experimentalsys.Errno        { return experimentalsys.EACCES }
func (f *callFS) Symlink(string, string) experimentalsys.Errno       { return experimentalsys.EACCES }
func (f *callFS) Link(string, string) experimentalsys.Errno          { return experimentalsys.EACCES }
func (f *callFS) Chmod(string, fs.FileMode) experimentalsys.Errno    { return experimentalsys.EACCES }
func (f *callFS) Utimens(string, int64, int64) experimentalsys.Errno { return 0 }
func (f *callFS) Readlink(string) (string, experimentalsys.Errno)    { return "", experimentalsys.EINVAL }

// write stores p at off in output.json, refusing to grow it past maxOutput.
func (f *callFS) write(p []byte, off int64) (int, experimentalsys.Errno) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.hasOutput {
		return 0, experimentalsys.EBADF // unlinked while open
	}
	end := off + int64(len(p))
	if end > f.maxOutput {
		f.overflow = true
		return 0, experimentalsys.EIO
	}
	if end > int64(len(f.output)) {
		if end > int64(cap(f.output)) {
			n := make([]byte, end, max(end, 2*int64(cap(f.output)), 512))
			copy(n, f.output)
			f.output = n
		} else {
			f.output = f.output[:end]
		}
	}
	copy(f.output[off:], p)
	return len(p), 0
}

// adapt wraps one opened file as a wazero file.
func adapt(file fs.File, flag experimentalsys.Oflag) (experimentalsys.File, experimentalsys.Errno) {
	return (&sysfs.AdaptFS{FS: openedFS{file}}).OpenFile(".", flag&^(experimentalsys.O_CREAT|experimentalsys.O_TRUNC|experimentalsys.O_EXCL), 0)
}

// openedFS is an fs.FS whose only file is already open.
type openedFS struct{ f fs.File }

func (o openedFS) Open(string) (fs.File, error) { return o.f, nil }

// fileInfo is an fs.FileInfo from a stat.
type fileInfo struct {
	name string
	st   sys.Stat_t
}

func (i fileInfo) Name() string               { return i.name }
func (i fileInfo) Size() int64                { return i.st.Size }
func (i fileInfo) Mode() fs.FileMode          { return i.st.Mode }
func (i fileInfo) ModTime() time.Time         { return time.Unix(0, i.st.Mtim) }
func (i fileInfo) IsDir() bool                { return i.st.Mode.IsDir() }
func (i fileInfo) Sys() any                   { return &i.st }
func (i fileInfo) Type() fs.FileMode          { return i.st.Mode.Type() }
func (i fileInfo) Info() (fs.FileInfo, error) { return i, nil }

type dirFile struct {
	fs   *callFS
	done bool
}

func (d *dirFile) Stat() (fs.FileInfo, error) { return fileInfo{".", d.fs.stat(inoRoot)}, nil }
func (d *dirFile) Read([]byte) (int, error)   { return 0, experimentalsys.EISDIR }
func (d *dirFile) Close() error               { return nil }
func (d *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	if d.done {
		if n > 0 {
			return nil, io.EOF
		}
		return nil, nil
	}
	d.done = true
	ents := []fs.DirEntry{fileInfo{sandbox.InputFile, d.fs.stat(inoInput)}}
	if _, errno := d.fs.lookup(sandbox.OutputFile); errno == 0 {
		ents = append(ents, fileInfo{sandbox.OutputFile, d.fs.stat(inoOutput)})
	}
	return ents, nil
}

type inputFile struct {
	fs  *callFS
	pos int64
}

func (i *inputFile) Stat() (fs.FileInfo, error) {
	return fileInfo{sandbox.InputFile, i.fs.stat(inoInput)}, nil
}
func (i *inputFile) Close() error { return nil }
func (i *inputFile) Read(p []byte) (int, error) {
	n, err := i.ReadAt(p, i.pos)
	i.pos += int64(n)
	return n, err
}
func (i *inputFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, experimentalsys.EINVAL
	}
	if off >= int64(len(i.fs.input)) {
		return 0, io.EOF
	}
	n := copy(p, i.fs.input[off:])
	return n, nil
}
func (i *inputFile) Seek(off int64, whence int) (int64, error) {
	return seek(&i.pos, int64(len(i.fs.input)), off, whence)
}

type outputFile struct {
	fs                  *callFS
	pos                 int64
	read, write, append bool
}

func (o *outputFile) Stat() (fs.FileInfo, error) {
	return fileInfo{sandbox.OutputFile, o.fs.stat(inoOutput)}, nil
}
func (o *outputFile) Close() error { return nil }
func (o *outputFile) size() int64 {
	o.fs.mu.Lock()
	defer o.fs.mu.Unlock()
	return int64(len(o.fs.output))
}
func (o *outputFile) Read(p []byte) (int, error) {
	n, err := o.ReadAt(p, o.pos)
	o.pos += int64(n)
	return n, err
}
func (o *outputFile) ReadAt(p []byte, off int64) (int, error) {
	if !o.read {
		return 0, experimentalsys.EBADF
	}
	if off < 0 {
		return 0, experimentalsys.EINVAL
	}
	o.fs.mu.Lock()
	defer o.fs.mu.Unlock()
	if off >= int64(len(o.fs.output)) {
		return 0, io.EOF
	}
	return copy(p, o.fs.output[off:]), nil
}
func (o *outputFile) Write(p []byte) (int, error) {
	if o.append {
		o.pos = o.size()
	}
	n, err := o.WriteAt(p, o.pos)
	o.pos += int64(n)
	return n, err
}
func (o *outputFile) WriteAt(p []byte, off int64) (int, error) {
	if !o.write {
		return 0, experimentalsys.EBADF
	}
	if off < 0 {
		return 0, experimentalsys.EINVAL
	}
	n, errno := o.fs.write(p, off)
	if errno != 0 {
		return n, errno
	}
	return n, nil
}
func (o *outputFile) Seek(off int64, whence int) (int64, error) {
	return seek(&o.pos, o.size(), off, whence)
}

func seek(pos *int64, size, off int64, whence int) (int64, error) {
	var n int64
	switch whence {
	case io.SeekStart:
		n = off
	case io.SeekCurrent:
		n = *pos + off
	case io.SeekEnd:
		n = size + off
	default:
		return 0, experimentalsys.EINVAL
	}
	if n < 0 {
		return 0, experimentalsys.EINVAL
	}
	*pos = n
	return n, nil
}
