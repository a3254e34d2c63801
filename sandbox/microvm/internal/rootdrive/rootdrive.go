// Package rootdrive turns a container image's root filesystem (an OCI bundle's rootfs/) into a
// read-only ext4 drive that a microVM mounts as its tool's root: built once per content digest
// with mkfs.ext4 -d (e2fsprogs), cached in a directory, reused across calls and processes, and
// garbage-collected, least recently used first, beyond a size cap.
//
// A rootfs is untrusted. It is walked through an os.Root (nothing outside it is reached and no
// symlink is followed: symlinks become symlinks in the drive, resolved inside the guest's root),
// within bounds (MaxEntries, MaxDepth, MaxBytes). Device nodes, set-id bits and owners are copied
// as they are: they live in a file only a root-owned VMM reads, and the guest mounts the drive
// read-only, nodev and nosuid, as the Oci tier mounts a rootfs.
//
// Finding a tree's drive is cheap: a walk of its metadata (no file is read) gives its identity,
// which maps to the content digest of the version already built (an index on disk); a tree
// looked at less than Config.Recheck ago is not walked again.
package rootdrive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/axocoatl/isolation/internal/guest"
)

// Defaults.
const (
	// DefaultMaxBytes caps the cache (the sum of the drives' sizes).
	DefaultMaxBytes = 4 << 30
	// DefaultRecheck is how long a tree's identity is trusted without walking it again.
	DefaultRecheck = 2 * time.Second
	// maxMemo bounds the trees remembered in memory.
	maxMemo = 1024
	// touchEvery: a drive in use has its modification time (its LRU age) renewed at most this
	// often.
	touchEvery = time.Minute
	// staleTemp: a half-built drive older than this was left by a dead process.
	staleTemp = time.Hour
)

// MountPoints are the directories the guest mounts over in a tool's root; a drive whose tree lacks
// one gets an empty one (a rootfs need not have them, and the drive is read-only in the guest).
var MountPoints = []string{"proc", "dev", "tmp", "axocoatl"}

// Config configures a Cache.
type Config struct {
	// Dir holds the drives (created 0700 when missing). Required.
	Dir string
	// MaxBytes caps the drives' total size (DefaultMaxBytes when 0; no cap when negative). The
	// drive of the call at hand is kept even when it alone is larger.
	MaxBytes int64
	// Recheck is how long a tree's identity is trusted without a walk (DefaultRecheck when 0;
	// every time when negative).
	Recheck time.Duration
	// Logger receives builds and removals (slog.Default when nil).
	Logger *slog.Logger
}

// Cache is a directory of drives. Safe for concurrent use, also by several processes.
type Cache struct {
	opts Config
	log  *slog.Logger

	mu       sync.Mutex // protects memo and building
	memo     map[string]memo
	building map[string]*build
}

// memo is what was last found for one tree.
type memo struct {
	checked time.Time
	meta    string // the tree's metadata digest
	digest  string // its content digest
}

// build is one build in flight (callers of the same tree wait for it).
type build struct {
	done   chan struct{}
	digest string
	err    error
}

// New returns the cache in opts.Dir.
func New(opts Config) (*Cache, error) {
	if opts.Dir == "" {
		return nil, errors.New("rootdrive: Config.Dir is required")
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.Recheck == 0 {
		opts.Recheck = DefaultRecheck
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	for _, d := range []string{opts.Dir, filepath.Join(opts.Dir, "meta")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("rootdrive: %w", err)
		}
	}
	return &Cache{opts: opts, log: log, memo: map[string]memo{}, building: map[string]*build{}}, nil
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.opts.Dir }

// Drive is one cached drive, open and share-locked: the cache never removes a drive someone holds.
// Close releases it.
type Drive struct {
	// Digest is the content digest of the tree (hex SHA-256 over every entry's path, type,
	// permissions, owner, size and data).
	Digest string
	// Path is the drive file.
	Path string
	f    *os.File
}

// File is the drive, open read-only (pass a duplicate to a VMM: it stays valid even once the
// file is removed from the cache).
func (d *Drive) File() *os.File { return d.f }

// Close releases the drive.
func (d *Drive) Close() error {
	if d == nil || d.f == nil {
		return nil
	}
	return d.f.Close()
}

// Open returns the drive of the tree at rootfs (a directory: the caller resolves it inside its
// bundle), building it when this content has none yet. Errors about the tree itself match ErrTree.
func (c *Cache) Open(ctx context.Context, rootfs string) (*Drive, error) {
	for attempt := 0; ; attempt++ {
		digest, err := c.digest(ctx, rootfs)
		if err != nil {
			return nil, err
		}
		d, err := c.openDrive(digest)
		if errors.Is(err, fs.ErrNotExist) && attempt == 0 {
			// Removed by a GC (ours or another process's) since: build it again.
			c.forget(rootfs)
			continue
		}
		return d, err
	}
}

// Digest returns the content digest of the tree at rootfs, building its drive when needed (as
// Open, without holding it).
func (c *Cache) Digest(ctx context.Context, rootfs string) (string, error) {
	d, err := c.Open(ctx, rootfs)
	if err != nil {
		return "", err
	}
	defer d.Close()
	return d.Digest, nil
}

func (c *Cache) forget(rootfs string) {
	c.mu.Lock()
	delete(c.memo, rootfs)
	c.mu.Unlock()
}

// drivePath is the file of a content digest.
func (c *Cache) drivePath(digest string) string { return filepath.Join(c.opts.Dir, digest+".ext4") }

// openDrive opens and share-locks the drive of digest and renews its LRU age.
func (c *Cache) openDrive(digest string) (*Drive, error) {
	p := c.drivePath(digest)
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		return nil, fmt.Errorf("rootdrive: lock %s: %w", p, err)
	}
	// A GC that removed the file between our open and lock leaves us an unlinked file: usable
	// (a VMM gets the descriptor), but say so by reopening once so the cache stays consistent.
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err == nil && st.Nlink == 0 {
		f.Close()
		return nil, fs.ErrNotExist
	}
	if fi, err := f.Stat(); err == nil && time.Since(fi.ModTime()) > touchEvery {
		now := time.Now()
		_ = os.Chtimes(p, now, now)
	}
	return &Drive{Digest: digest, Path: p, f: f}, nil
}

// digest finds the content digest of the tree at rootfs, building its drive when there is none.
func (c *Cache) digest(ctx context.Context, rootfs string) (string, error) {
	c.mu.Lock()
	m, ok := c.memo[rootfs]
	c.mu.Unlock()
	if ok && c.opts.Recheck > 0 && time.Since(m.checked) < c.opts.Recheck {
		return m.digest, nil
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrTree, err)
	}
	defer root.Close()
	h := sha256.New()
	if _, err := walk(root, h, false); err != nil {
		return "", err
	}
	meta := hexSum(h)
	if ok && m.meta == meta {
		c.remember(rootfs, memo{checked: time.Now(), meta: meta, digest: m.digest})
		return m.digest, nil
	}
	if d := c.readIndex(meta); d != "" {
		if _, err := os.Stat(c.drivePath(d)); err == nil {
			c.remember(rootfs, memo{checked: time.Now(), meta: meta, digest: d})
			return d, nil
		}
	}
	// Build (once per tree at a time in this process; the lock file orders processes).
	c.mu.Lock()
	b := c.building[meta]
	if b == nil {
		b = &build{done: make(chan struct{})}
		c.building[meta] = b
		c.mu.Unlock()
		b.digest, b.err = c.build(ctx, root, meta)
		c.mu.Lock()
		delete(c.building, meta)
		close(b.done)
	}
	c.mu.Unlock()
	select {
	case <-b.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if b.err != nil {
		return "", b.err
	}
	c.remember(rootfs, memo{checked: time.Now(), meta: meta, digest: b.digest})
	return b.digest, nil
}

func (c *Cache) remember(rootfs string, m memo) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.memo[rootfs]; !ok && len(c.memo) >= maxMemo {
		var oldest string
		var t time.Time
		for k, v := range c.memo {
			if oldest == "" || v.checked.Before(t) {
				oldest, t = k, v.checked
			}
		}
		delete(c.memo, oldest)
	}
	c.memo[rootfs] = m
}

// readIndex returns the content digest recorded for a metadata digest, or "".
func (c *Cache) readIndex(meta string) string {
	b, err := os.ReadFile(filepath.Join(c.opts.Dir, "meta", meta))
	if err != nil {
		return ""
	}
	d := strings.TrimSpace(string(b))
	if !validDigest(d) {
		return ""
	}
	return d
}

func (c *Cache) writeIndex(meta, digest string) error {
	return writeFileAtomic(filepath.Join(c.opts.Dir, "meta", meta), []byte(digest+"\n"))
}

func validDigest(d string) bool {
	if len(d) != 64 {
		return false
	}
	for _, r := range d {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
			return false
		}
	}
	return true
}

// build hashes the tree's content and makes its drive unless one of that content exists.
func (c *Cache) build(ctx context.Context, root *os.Root, meta string) (string, error) {
	unlock, err := c.lock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another process may have built it while we waited.
	if d := c.readIndex(meta); d != "" {
		if _, err := os.Stat(c.drivePath(d)); err == nil {
			return d, nil
		}
	}
	t0 := time.Now()
	h := sha256.New()
	st, err := walk(root, h, true)
	if err != nil {
		return "", err
	}
	digest := hexSum(h)
	hashed := time.Since(t0)
	if _, err := os.Stat(c.drivePath(digest)); err != nil {
		if err := c.mkfs(ctx, root, st, digest); err != nil {
			return "", err
		}
		c.log.Info("root drive built", "digest", digest[:12], "entries", st.entries, "bytes", st.bytes,
			"hash_ms", hashed.Milliseconds(), "total_ms", time.Since(t0).Milliseconds())
	}
	if err := c.writeIndex(meta, digest); err != nil {
		return "", fmt.Errorf("rootdrive: %w", err)
	}
	c.gcLocked(digest)
	return digest, nil
}

// lock takes the cache's build lock (a flock on Dir/.lock), waiting as long as ctx allows.
func (c *Cache) lock(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(filepath.Join(c.opts.Dir, ".lock"), os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("rootdrive: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("rootdrive: lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// size is the drive size for a tree: its blocks, its inode table, the file system's own
// metadata, and a margin.
func size(st treeStats) (bytes, inodes int64) {
	inodes = st.entries + int64(len(MountPoints)) + 16
	blocks := st.blocks + inodes/16 + 512
	bytes = blocks*4096*11/10 + 4<<20
	return (bytes + 1<<20 - 1) &^ (1<<20 - 1), inodes
}

// mkfs builds the drive of the tree into a temporary file and renames it into place.
func (c *Cache) mkfs(ctx context.Context, root *os.Root, st treeStats, digest string) error {
	dir, err := root.Open(".")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrTree, err)
	}
	defer dir.Close()
	tmp, err := os.CreateTemp(c.opts.Dir, "tmp-*.ext4")
	if err != nil {
		return fmt.Errorf("rootdrive: %w", err)
	}
	name := tmp.Name()
	tmp.Close()
	ok := false
	defer func() {
		if !ok {
			os.Remove(name)
		}
	}()
	sz, inodes := size(st)
	for try := 0; ; try++ {
		// -d copies the tree: directories, regular files (sparse), symlinks as symlinks,
		// device nodes, FIFOs and sockets as inodes, hard links as links, owners and modes;
		// it follows no symlink. The tree is handed over as a descriptor (fd 3), so its path
		// is resolved once, here. No journal: the drive is never written.
		cmd := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", guest.ImageLabel, "-b", "4096", "-I", "256",
			"-N", strconv.FormatInt(inodes, 10), "-m", "0", "-O", "^has_journal,^resize_inode",
			"-E", "root_owner=0:0", "-d", "/proc/self/fd/3", name, strconv.FormatInt(sz>>10, 10)+"k")
		cmd.ExtraFiles = []*os.File{dir}
		cmd.Env = []string{"PATH=/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL=C"}
		out, err := cmd.CombinedOutput()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("rootdrive: mkfs.ext4 not found (apt-get install e2fsprogs): %w", err)
		}
		if try == 0 && bytes.Contains(out, []byte("Could not allocate")) || try == 0 && bytes.Contains(out, []byte("No space")) {
			sz *= 2
			inodes *= 2
			continue
		}
		return fmt.Errorf("rootdrive: mkfs.ext4: %v: %s", err, strings.TrimSpace(string(out)))
	}
	// The guest mounts over these: add the missing ones. lost+found, which mkfs adds, goes
	// when the tree had none, so that the tool sees the same root in both tiers.
	var cmds strings.Builder
	for _, mp := range MountPoints {
		if _, has := st.top[mp]; !has {
			fmt.Fprintf(&cmds, "mkdir %s\n", mp)
		}
	}
	if _, has := st.top["lost+found"]; !has {
		cmds.WriteString("rmdir lost+found\n")
	}
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", "-", name)
	cmd.Stdin = strings.NewReader(cmds.String())
	cmd.Env = []string{"PATH=/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL=C"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("rootdrive: debugfs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Chmod(name, 0o600); err != nil {
		return err
	}
	if err := os.Rename(name, c.drivePath(digest)); err != nil {
		return fmt.Errorf("rootdrive: %w", err)
	}
	ok = true
	return nil
}

// GC removes the least recently used drives while the cache is over its cap, skipping drives
// someone holds, then index entries of removed drives and builds left by dead processes.
func (c *Cache) GC(ctx context.Context) error {
	unlock, err := c.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	c.gcLocked("")
	return nil
}

// gcLocked is GC under the build lock; keep is never removed.
func (c *Cache) gcLocked(keep string) {
	ents, err := os.ReadDir(c.opts.Dir)
	if err != nil {
		c.log.Warn("root drive cache", "err", err)
		return
	}
	type drive struct {
		digest string
		size   int64
		mtime  time.Time
	}
	var drives []drive
	var total int64
	present := map[string]bool{}
	for _, e := range ents {
		n := e.Name()
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		switch {
		case strings.HasPrefix(n, "tmp-"):
			if time.Since(fi.ModTime()) > staleTemp {
				os.Remove(filepath.Join(c.opts.Dir, n))
			}
		case strings.HasSuffix(n, ".ext4") && validDigest(strings.TrimSuffix(n, ".ext4")):
			d := strings.TrimSuffix(n, ".ext4")
			present[d] = true
			// The space it takes (a drive is sparse).
			sz := fi.Size()
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				sz = st.Blocks * 512
			}
			drives = append(drives, drive{d, sz, fi.ModTime()})
			total += sz
		}
	}
	if c.opts.MaxBytes > 0 && total > c.opts.MaxBytes {
		slices.SortFunc(drives, func(a, b drive) int { return a.mtime.Compare(b.mtime) })
		for _, d := range drives {
			if total <= c.opts.MaxBytes {
				break
			}
			if d.digest == keep {
				continue
			}
			if c.remove(d.digest) {
				total -= d.size
				delete(present, d.digest)
			}
		}
	}
	// Index entries whose drive is gone.
	metaDir := filepath.Join(c.opts.Dir, "meta")
	if ents, err := os.ReadDir(metaDir); err == nil {
		for _, e := range ents {
			if d := c.readIndex(e.Name()); d == "" || !present[d] {
				os.Remove(filepath.Join(metaDir, e.Name()))
			}
		}
	}
}

// remove deletes a drive nobody holds (an exclusive lock that does not wait).
func (c *Cache) remove(digest string) bool {
	p := c.drivePath(digest)
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return false // in use
	}
	if err := os.Remove(p); err != nil {
		c.log.Warn("remove root drive", "path", p, "err", err)
		return false
	}
	c.log.Info("root drive removed (cache over its cap)", "digest", digest[:12])
	return true
}

// Usage is the space the cache's drives take.
func (c *Cache) Usage() (int64, error) {
	ents, err := os.ReadDir(c.opts.Dir)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".ext4") || strings.HasPrefix(e.Name(), "tmp-") {
			continue
		}
		if fi, err := e.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			}
		}
	}
	return total, nil
}

func writeFileAtomic(p string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

// Clone returns another handle on the same drive, holding it as long as either is open.
func (d *Drive) Clone() (*Drive, error) {
	fd, err := syscall.Dup(int(d.f.Fd()))
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	return &Drive{Digest: d.Digest, Path: d.Path, f: os.NewFile(uintptr(fd), d.Path)}, nil
}

// Path is the drive file of a content digest (which may not exist).
func (c *Cache) Path(digest string) string { return c.drivePath(digest) }
