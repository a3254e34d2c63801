// Package wasm is the Wasmtime tier: tools compiled to WebAssembly (WASI preview 1), run by
// wazero's compiler in this process. Tools come from tool folders (Call.Entrypoint) or are
// registered from memory (Register).
//
// Each module is compiled once, keyed by its content (a changed file recompiles), with an
// optional on-disk compilation cache; every call gets a fresh instance with:
//   - /axocoatl/input.json (read-only) and /axocoatl/output.json, in memory: no other file, no
//     host filesystem, no environment variables, no sockets (WASI preview 1 has none); the only
//     way out is the http_request host function (http.go), under the call's egress policy;
//   - stdout and stderr kept as bounded tails of their own (Outcome.Stdout, Outcome.Stderr);
//   - a linear memory capped at the call's MemoryMB (default 64);
//   - the call's timeout: the instance is stopped within about a millisecond of the deadline.
//
// A reactor (a module that exports _initialize and run and no _start: a Go package main built
// with -buildmode=c-shared whose run function has //go:wasmexport run) runs from a snapshot: it
// is initialised once, when compiled, and every call starts a fresh instance from the memory and
// globals captured after _initialize, then calls run. No state passes from one call to the next.
// As with wizer, _initialize must not depend on the call (it sees an empty input.json), and what
// it drew from its environment is frozen into the snapshot: a Go guest's map hash seeds and
// math/rand's automatic seed are the same in every call (crypto/rand still reads the host's
// random source in every call).
//
// At most MaxConcurrency instances run at once (compiled wasm is not preempted, so more would only
// raise every call's latency); the others wait their turn in a bounded queue (MaxQueued calls, for
// at most QueueTimeout; past either a call fails with isolation.ErrBusy), and a call's timeout
// starts when it leaves the queue. Compiled modules are kept in a cache bounded by count and by
// an estimate of their memory (MaxModules, MaxModuleBytes), least recently used evicted first.
// RATIONALE.md explains how modules are rewritten before compiling (merged data segments, a stop
// flag at every loop header) and what each step is worth.
package wasm

import (
	"container/list"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/internal/callio"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/wasm/internal/wasmbin"
)

// The optional interfaces of package sandbox this tier has.
var (
	_ sandbox.Setupper        = (*Sandbox)(nil)
	_ sandbox.Preparer        = (*Sandbox)(nil)
	_ sandbox.MemoryDefaulter = (*Sandbox)(nil)
	_ sandbox.Queuer          = (*Sandbox)(nil)
	_ sandbox.EgressSupporter = (*Sandbox)(nil)
)

// Backend is the Outcome.Backend of this tier.
const Backend = "wazero"

// DefaultMemoryMB is the memory limit of a call that sets none.
const DefaultMemoryMB = 64

// MaxMemoryMB is all a 32-bit linear memory can address (65536 pages of 64 KiB); larger limits
// are lowered to it.
const MaxMemoryMB = 4096

// Defaults of Config.
const (
	defaultQueuedPerSlot  = 64
	defaultQueueTimeout   = 2 * time.Second
	defaultMaxModules     = 64
	defaultMaxModuleBytes = 1 << 30
)

// maxModuleFile bounds the size of a module file: a tool folder is untrusted and the file is
// read whole into memory.
const maxModuleFile = 256 << 20

// moduleCostFactor estimates a compiled module's memory from its wasm size: the machine code
// and wazero's metadata, about 2.5× the wasm of a Go guest (measured: the RSS growth per
// compiled module of testdata/guest), rounded up.
const moduleCostFactor = 3

// segmentGap is the largest run of zeros between two data segments that merging fills in: larger
// gaps stay gaps (fresh memory is zero already), smaller ones cost less to copy than a segment.
const segmentGap = 4096

// Config configures a Sandbox. The zero value is usable.
type Config struct {
	// CacheDir holds wazero's on-disk compilation cache, so a new process skips compiling modules
	// it has seen ("" keeps compiled code in memory only). It is created if missing.
	CacheDir string
	// MaxCacheDirBytes bounds CacheDir (default 2 GiB; negative: no bound): at start and at most
	// every 30 s after a compile, the least recently used compiled modules are removed until it
	// holds at most this much.
	MaxCacheDirBytes int64
	// MaxConcurrency caps instances running at once (default GOMAXPROCS); other calls queue.
	MaxConcurrency int
	// MaxQueued caps the calls waiting for an instance slot (default 64 × MaxConcurrency; negative:
	// none wait). A call that finds the queue full fails at once with isolation.ErrBusy.
	MaxQueued int
	// QueueTimeout bounds a call's wait for a slot (default 2 s; negative: no wait); a call that
	// waited that long fails with isolation.ErrBusy. The call's own timeout (Limits.Timeout)
	// starts only when it has its slot: time queued is not the tool's time.
	QueueTimeout time.Duration
	// MaxModules and MaxModuleBytes bound the compiled modules kept in memory (defaults 64 and
	// 1 GiB; a module is charged moduleCostFactor × its size plus its snapshot). Past either, the
	// least recently used are closed, once their calls in flight have ended; a later call
	// compiles its module again (from CacheDir when set). The most recently used one is kept
	// whatever its size.
	MaxModules     int
	MaxModuleBytes int64
	// DefaultMemoryMB is the limit for calls that set none (default 64).
	DefaultMemoryMB int
	// Logger receives compile events; nil logs nowhere.
	Logger *slog.Logger
	// Gate dials for the http_request host function (see http.go) under each call's policy
	// (Limits.Egress); nil: calls with a policy are refused (isolation.ErrTierUnavailable).
	Gate *egress.Gate
	// HTTP bounds http_request.
	HTTP HTTPConfig

	// The fields below are not configuration: tests and benchmarks of this package set them.
	// keepDataSegments, heapMemory and engineDeadlineChecks switch off the optimisations (merged
	// data segments, pooled mmap memory, stop-flag loop checks instead of wazero's), to measure
	// what each is worth (BenchmarkCall). Runaway guests are stopped either way.
	keepDataSegments     bool
	heapMemory           bool
	engineDeadlineChecks bool
	// noSnapshots runs reactors (see the package doc) from scratch: _initialize, then run, in
	// every call.
	noSnapshots bool

	// noDeadlineChecks drops wazero's termination checks (a runaway guest could not be stopped):
	// benchmarks only, to measure what the checks cost.
	noDeadlineChecks bool
}

// DefaultCacheDir is the compilation cache under the user's cache directory
// ($XDG_CACHE_HOME/axocoatl/wazero, ~/.cache/axocoatl/wazero).
func DefaultCacheDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "axocoatl", "wazero"), nil
}

// Sandbox runs WebAssembly tools. Safe for concurrent use; Close is idempotent; Run after Close
// fails.
type Sandbox struct {
	cfg Config
	log *slog.Logger
	// rt runs instrumented modules (stopped by their stop flag: no engine checks); rtChecked
	// runs the others with wazero's termination checks.
	rt        wazero.Runtime
	rtChecked wazero.Runtime
	cache     wazero.CompilationCache // nil without CacheDir
	// lastTrim is when trimCache last ran (UnixNano).
	lastTrim atomic.Int64
	pool     *memPool
	// slots holds one token per instance allowed to run; queued counts the calls waiting for one.
	slots  chan struct{}
	queued atomic.Int64

	mu sync.Mutex // protects files, registered, modules, lru, moduleBytes, closed and every module's refs, elem, evicted, size
	// files remembers each entrypoint's identity (stat) and content hash, so a call costs one stat
	// unless the file changed. Every entry's hash is a key of modules.
	files map[string]fileID
	// registered holds the tools registered from memory (Register), by name.
	registered map[string]registeredTool
	// modules holds the compiled modules (and the failed ones: a module that does not compile
	// fails again at once) by content hash; lru orders them, most recently used first, and
	// moduleBytes is the sum of their sizes.
	modules     map[[32]byte]*module
	lru         list.List
	moduleBytes int64
	closed      bool

	// calls counts Runs in flight; Close waits for them before closing the runtime.
	calls sync.WaitGroup
}

type fileID struct {
	size  int64
	mtime time.Time
	ino   uint64
	dev   uint64
	hash  [32]byte
}

// module is one compiled module, shared by every call of the same content.
type module struct {
	hash [32]byte
	// paths are the entrypoints whose files entry may name this module (dropped with it).
	paths map[string]struct{}
	// refs counts the calls using the module (the compiling call included); evicted is set when
	// it left the cache: compiled is closed when both hold. elem is its place in Sandbox.lru and
	// size its charge in Sandbox.moduleBytes. All four are guarded by Sandbox.mu.
	refs    int
	evicted bool
	elem    *list.Element
	size    int64

	// The fields below are written by the compiling call before ready is closed, and read-only
	// afterwards.
	ready    chan struct{} // closed when compiled or err is set
	compiled wazero.CompiledModule
	info     wasmbin.Info
	merged   bool
	// stoppable: the module has the stop flag (wasmbin.InstrumentLoops) and runs in s.rt.
	stoppable bool
	// reactor: the module exports _initialize and run (wasmbin.IsReactor); snap is set when it
	// runs in snapshot mode: compiled starts from the snapshot and only run is called.
	reactor bool
	snap    *snapshot
	// wasmSize is the size of the module as compiled (rewritten).
	wasmSize int64
	// err is why the module cannot run. It depends only on the content, so it is kept: the next
	// call of the same content fails at once instead of compiling again; unless retry is set (an
	// error that may not recur), which drops the module from the cache at once.
	err   error
	retry bool
}

// New returns a Sandbox.
func New(cfg Config) (*Sandbox, error) {
	if cfg.MaxConcurrency <= 0 {
		cfg.MaxConcurrency = runtime.GOMAXPROCS(0)
	}
	switch {
	case cfg.MaxQueued == 0:
		cfg.MaxQueued = defaultQueuedPerSlot * cfg.MaxConcurrency
	case cfg.MaxQueued < 0:
		cfg.MaxQueued = 0
	}
	switch {
	case cfg.QueueTimeout == 0:
		cfg.QueueTimeout = defaultQueueTimeout
	case cfg.QueueTimeout < 0:
		cfg.QueueTimeout = 0
	}
	if cfg.MaxModules <= 0 {
		cfg.MaxModules = defaultMaxModules
	}
	if cfg.MaxModuleBytes <= 0 {
		cfg.MaxModuleBytes = defaultMaxModuleBytes
	}
	if cfg.DefaultMemoryMB <= 0 {
		cfg.DefaultMemoryMB = DefaultMemoryMB
	}
	if cfg.MaxCacheDirBytes == 0 {
		cfg.MaxCacheDirBytes = defaultMaxCacheDirBytes
	}
	cfg.DefaultMemoryMB = min(cfg.DefaultMemoryMB, MaxMemoryMB)
	cfg.HTTP = cfg.HTTP.withDefaults()
	s := &Sandbox{
		cfg:        cfg,
		log:        cfg.Logger,
		pool:       newMemPool(cfg.MaxConcurrency, cfg.heapMemory),
		slots:      make(chan struct{}, cfg.MaxConcurrency),
		files:      map[string]fileID{},
		registered: map[string]registeredTool{},
		modules:    map[[32]byte]*module{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	rc := wazero.NewRuntimeConfigCompiler()
	if cfg.CacheDir != "" {
		if err := os.MkdirAll(cfg.CacheDir, 0o700); err != nil {
			return nil, fmt.Errorf("wasm: compilation cache: %w", err)
		}
		s.trimCache()
		c, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("wasm: compilation cache: %w", err)
		}
		s.cache = c
		rc = rc.WithCompilationCache(c)
	}
	ctx := context.Background()
	for _, r := range []struct {
		rt     *wazero.Runtime
		checks bool
	}{{&s.rt, false}, {&s.rtChecked, !cfg.noDeadlineChecks}} {
		*r.rt = wazero.NewRuntimeWithConfig(ctx, rc.WithCloseOnContextDone(r.checks))
		if _, err := wasi_snapshot_preview1.Instantiate(ctx, *r.rt); err != nil {
			s.closeRuntimes(ctx)
			return nil, fmt.Errorf("wasm: WASI: %w", err)
		}
		if err := instantiateHostModule(ctx, *r.rt); err != nil {
			s.closeRuntimes(ctx)
			return nil, fmt.Errorf("wasm: host module: %w", err)
		}
	}
	return s, nil
}

// trimCache bounds the on-disk compilation cache (see trimCacheDir); a failure is logged, never
// the call's.
func (s *Sandbox) trimCache() {
	s.lastTrim.Store(time.Now().UnixNano())
	if s.cfg.MaxCacheDirBytes < 0 {
		return
	}
	removed, err := trimCacheDir(s.cfg.CacheDir, s.cfg.MaxCacheDirBytes, time.Now())
	if err != nil {
		s.log.Warn("wasm: trimming the compilation cache", "dir", s.cfg.CacheDir, "err", err)
	}
	if removed > 0 {
		s.log.Info("wasm: compilation cache trimmed", "dir", s.cfg.CacheDir, "removed_bytes", removed, "max_bytes", s.cfg.MaxCacheDirBytes)
	}
}

func (s *Sandbox) closeRuntimes(ctx context.Context) error {
	var err error
	for _, rt := range []wazero.Runtime{s.rt, s.rtChecked} {
		if rt != nil {
			err = errors.Join(err, rt.Close(ctx))
		}
	}
	if s.cache != nil {
		err = errors.Join(err, s.cache.Close(ctx))
	}
	return err
}

func (s *Sandbox) Tier() isolation.Tier { return isolation.TierWasm }

// DefaultMemoryMB is the memory limit of calls that set none (sandbox.MemoryDefaulter).
func (s *Sandbox) DefaultMemoryMB() int { return s.cfg.DefaultMemoryMB }

// Probe reports the tier available: wazero runs in this process on every host (with its
// interpreter where it has no compiler, which is much slower).
func (s *Sandbox) Probe(context.Context) isolation.Availability {
	a := isolation.Availability{Available: true, Backend: Backend}
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		a.Backend = Backend + " (interpreter)"
	}
	if why := s.SupportsEgress(); why != "" {
		a.Network = "unavailable: " + why
	} else {
		a.Network = "the http_request host function, every connection dialed by the egress gate"
	}
	return a
}

// SupportsEgress implements sandbox.EgressSupporter: a call with a network policy needs the
// gate its http_request host function dials through.
func (s *Sandbox) SupportsEgress() string {
	if s.cfg.Gate == nil {
		return "no egress gate is configured for the Wasmtime tier (its http_request host function dials only through one)"
	}
	return ""
}

// Supports accepts only WebAssembly modules.
func (s *Sandbox) Supports(req isolation.RuntimeRequirement) string {
	if req == isolation.RequireWasm {
		return ""
	}
	var need string
	switch req {
	case isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary:
		need = "the Firecracker or Oci tier"
	case isolation.RequireContainerImage:
		need = "the Oci tier"
	default:
		need = "the None tier"
	}
	return fmt.Sprintf("Wasmtime runs only WebAssembly modules (WasmCompiled); %s needs %s", req, need)
}

// Prepare compiles the call's module ahead of its first call (and fills the disk cache).
// Idempotent.
func (s *Sandbox) Prepare(ctx context.Context, call sandbox.Call) error {
	if reason := s.Supports(call.Runtime); reason != "" {
		return isolation.Errorf(isolation.ErrTierUnavailable, "%s", reason)
	}
	if !s.enter() {
		return errClosed
	}
	defer s.calls.Done()
	m, err := s.acquire(ctx, call)
	if err != nil {
		return err
	}
	s.release(m)
	return nil
}

// QueuesCalls reports that Run applies call.Limits.Timeout itself, from the moment the call has
// an instance slot (sandbox.Queuer): the executor gives Run the caller's context, which bounds
// the whole call, and the time queued is bounded by QueueTimeout.
func (s *Sandbox) QueuesCalls() bool { return true }

var errClosed = errors.New("wasm: sandbox is closed")

func (s *Sandbox) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.calls.Add(1)
	return true
}

// acquire returns the compiled module of call's entrypoint (or, without one, of the module
// registered as call.Tool), compiling it when its content is new, with a reference the caller
// gives back with release. A module that does not compile is an isolation.ErrInvalidTool error
// naming the tool and the compile error.
func (s *Sandbox) acquire(ctx context.Context, call sandbox.Call) (*module, error) {
	path := call.Entrypoint
	invalid := func(format string, args ...any) error {
		return &isolation.Error{Kind: isolation.ErrInvalidTool, Tool: call.Tool, Message: fmt.Sprintf(format, args...)}
	}
	var m *module
	switch {
	case path == "":
		s.mu.Lock()
		r, ok := s.registered[call.Tool]
		var fresh bool
		if ok {
			m, fresh = s.cached(r.hash)
		}
		s.mu.Unlock()
		if !ok {
			return nil, &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: call.Tool, Message: "no Wasm module is registered under this name"}
		}
		if fresh {
			s.compile(ctx, "registered module "+call.Tool, r.module, m)
			s.compiled(m)
		}
	case !filepath.IsAbs(path):
		return nil, fmt.Errorf("wasm: entrypoint %q is not an absolute path", path)
	default:
		fi, err := os.Stat(path)
		if err != nil {
			return nil, invalid("module: %v", err)
		}
		id, err := fileIdentity(path, fi)
		if err != nil {
			return nil, invalid("%v", err)
		}
		s.mu.Lock()
		m = s.known(path, id)
		s.mu.Unlock()
		if m == nil {
			bin, err := readModule(path)
			if err != nil {
				return nil, invalid("%v", err)
			}
			id.hash = sha256.Sum256(bin)
			s.mu.Lock()
			var fresh bool
			m, fresh = s.cached(id.hash)
			s.files[path] = id
			m.paths[path] = struct{}{}
			s.mu.Unlock()
			if fresh {
				s.compile(ctx, path, bin, m)
				s.compiled(m)
			}
		}
	}
	select {
	case <-m.ready:
	case <-ctx.Done():
		s.release(m)
		return nil, sandbox.ContextError(ctx)
	}
	if m.err != nil {
		s.release(m)
		return nil, invalid("%v", m.err)
	}
	return m, nil
}

// cached returns the module of content hash with a reference taken, adding an entry when there
// is none (fresh: the caller compiles it, then calls compiled). s.mu is held.
func (s *Sandbox) cached(hash [32]byte) (m *module, fresh bool) {
	if m = s.modules[hash]; m == nil {
		m = &module{hash: hash, paths: map[string]struct{}{}, ready: make(chan struct{})}
		m.elem = s.lru.PushFront(m)
		s.modules[hash] = m
		fresh = true
	}
	s.use(m)
	return m, fresh
}

// fileIdentity is what tells a changed file from the one already compiled.
func fileIdentity(path string, fi os.FileInfo) (fileID, error) {
	if !fi.Mode().IsRegular() {
		return fileID{}, fmt.Errorf("module %s is not a regular file", path)
	}
	if fi.Size() > maxModuleFile {
		return fileID{}, fmt.Errorf("module %s is %d bytes, over the limit of %d", path, fi.Size(), maxModuleFile)
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino, id.dev = uint64(st.Ino), uint64(st.Dev)
	}
	return id, nil
}

// readModule reads a module file, at most maxModuleFile bytes of it.
func readModule(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module: %w", err)
	}
	defer f.Close()
	bin, err := io.ReadAll(io.LimitReader(f, maxModuleFile+1))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	if len(bin) > maxModuleFile {
		return nil, fmt.Errorf("module %s is over the limit of %d bytes", path, maxModuleFile)
	}
	return bin, nil
}

// known returns the cached module of path when the file is the one it was compiled from, with
// a reference taken. s.mu is held.
func (s *Sandbox) known(path string, id fileID) *module {
	k, ok := s.files[path]
	if !ok || k.size != id.size || !k.mtime.Equal(id.mtime) || k.ino != id.ino || k.dev != id.dev {
		return nil
	}
	m := s.modules[k.hash]
	if m == nil {
		return nil
	}
	s.use(m)
	return m
}

// use takes a reference on m and marks it most recently used. s.mu is held.
func (s *Sandbox) use(m *module) {
	m.refs++
	if !m.evicted {
		s.lru.MoveToFront(m.elem)
	}
}

// compiled records the end of m's compile (its size, or its error) and evicts what the cache
// holds over its bounds.
func (s *Sandbox) compiled(m *module) {
	var closing []*module
	s.mu.Lock()
	if !m.evicted {
		if m.compiled != nil {
			m.size = moduleCostFactor * m.wasmSize
			if m.snap != nil {
				for _, c := range m.snap.chunks {
					m.size += int64(len(c.data))
				}
			}
			s.moduleBytes += m.size
		}
		if m.retry {
			closing = append(closing, s.evict(m)...)
		}
		for s.lru.Len() > 1 && (s.lru.Len() > s.cfg.MaxModules || s.moduleBytes > s.cfg.MaxModuleBytes) {
			closing = append(closing, s.evict(s.lru.Back().Value.(*module))...)
		}
	}
	close(m.ready)
	s.mu.Unlock()
	s.closeModules(closing)
}

// evict removes m from the cache; it returns m when nothing uses it any more (the caller
// closes it outside the lock). s.mu is held.
func (s *Sandbox) evict(m *module) []*module {
	s.lru.Remove(m.elem)
	delete(s.modules, m.hash)
	s.moduleBytes -= m.size
	m.evicted = true
	for p := range m.paths {
		if s.files[p].hash == m.hash {
			delete(s.files, p)
		}
	}
	if m.refs == 0 {
		return []*module{m}
	}
	return nil
}

// release gives back a reference taken by acquire; the last one of an evicted module closes it.
func (s *Sandbox) release(m *module) {
	s.mu.Lock()
	m.refs--
	last := m.refs == 0 && m.evicted
	s.mu.Unlock()
	if last {
		s.closeModules([]*module{m})
	}
}

func (s *Sandbox) closeModules(ms []*module) {
	for _, m := range ms {
		if m.compiled != nil {
			_ = m.compiled.Close(context.Background())
			s.log.LogAttrs(context.Background(), slog.LevelInfo, "wasm module evicted", slog.Int64("size", m.size))
		}
	}
}

func (s *Sandbox) compile(ctx context.Context, path string, bin []byte, m *module) {
	start := time.Now()
	info, err := wasmbin.Inspect(bin)
	if err != nil {
		m.err = fmt.Errorf("wasm: %s: %w", path, err)
		return
	}
	m.info = info
	if !s.cfg.keepDataSegments {
		merged, ok, err := wasmbin.MergeData(bin, segmentGap)
		if err != nil {
			m.err = fmt.Errorf("wasm: %s: %w", path, err)
			return
		}
		bin, m.merged = merged, ok
	}
	rt := s.rtChecked
	if !s.cfg.engineDeadlineChecks && !s.cfg.noDeadlineChecks {
		inst, ok, err := wasmbin.InstrumentLoops(bin)
		if err != nil {
			m.err = fmt.Errorf("wasm: %s: %w", path, err)
			return
		}
		if ok {
			bin, m.stoppable, rt = inst, true, s.rt
		}
	}
	m.reactor, _ = wasmbin.IsReactor(bin)
	if m.reactor && m.stoppable && !s.cfg.noSnapshots {
		{
			snap, per, err := s.capture(ctx, bin)
			if err != nil {
				m.err = fmt.Errorf("wasm: %s: snapshot: %w", path, err)
				m.retry = errors.Is(err, errInitTimeout)
				return
			}
			if snap != nil {
				bin, m.snap = per, snap
				m.info.MinPages = snap.size / 65536
			}
		}
	}
	// Other callers may wait for this compile: it must not stop when the first caller gives up.
	c, err := rt.CompileModule(context.WithoutCancel(ctx), bin)
	if err != nil {
		m.err = fmt.Errorf("wasm: compile %s: %w", path, err)
		return
	}
	m.compiled, m.wasmSize = c, int64(len(bin))
	if s.cache != nil && time.Since(time.Unix(0, s.lastTrim.Load())) > cacheTrimInterval {
		s.trimCache()
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "wasm module compiled", slog.String("path", path),
		slog.Int("data_segments", info.DataSegments), slog.Bool("merged", m.merged), slog.Bool("stop_flag", m.stoppable),
		slog.Bool("snapshot", m.snap != nil),
		slog.Duration("duration", time.Since(start)))
}

// Run runs one call in a fresh instance. See the package doc for what the guest sees.
func (s *Sandbox) Run(ctx context.Context, call sandbox.Call) (sandbox.Outcome, error) {
	if reason := s.Supports(call.Runtime); reason != "" {
		return sandbox.Outcome{}, isolation.Errorf(isolation.ErrTierUnavailable, "%s", reason)
	}
	if !call.Limits.Egress.IsZero() && s.cfg.Gate == nil {
		return sandbox.Outcome{}, isolation.Errorf(isolation.ErrTierUnavailable, "the call has a network policy and this Wasm sandbox cannot enforce it: %s", s.SupportsEgress())
	}
	if !s.enter() {
		return sandbox.Outcome{}, errClosed
	}
	defer s.calls.Done()
	lim := call.Limits.WithDefaults()

	// Neither compiling (normally done by Setup already) nor waiting for a slot is the tool's
	// time: ctx (the caller's) bounds them, and the tool's clock starts once it has its slot.
	m, err := s.acquire(ctx, call)
	if err != nil {
		return sandbox.Outcome{}, err
	}
	defer s.release(m)
	memMB := lim.MemoryMB
	if memMB <= 0 {
		memMB = s.cfg.DefaultMemoryMB
	}
	// A 32-bit linear memory cannot exceed 4 GiB: a larger limit means the same and must not
	// reach the byte conversion below (2^44 MB would wrap to a limit of 0 bytes).
	memMB = min(memMB, MaxMemoryMB)
	limit := uint64(memMB) << 20
	if m.info.HasMemory && m.info.MinPages*65536 > limit {
		return sandbox.Outcome{}, isolation.Errorf(isolation.ErrMemoryLimit,
			"the module declares %d MiB of initial memory, over the limit of %d MiB", m.info.MinPages*65536>>20, memMB)
	}
	if err := s.takeSlot(ctx); err != nil {
		return sandbox.Outcome{}, err
	}
	defer func() { <-s.slots }()
	if ctx.Err() != nil {
		return sandbox.Outcome{}, sandbox.ContextError(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, lim.Timeout)
	defer cancel()
	hc := newHTTPCall(s.cfg.Gate, s.cfg.HTTP, lim.Egress, call.ID)
	defer hc.close()
	ctx = context.WithValue(ctx, httpCallKey{}, hc)

	fsys := newCallFS(call.Input, lim.MaxOutputBytes, time.Now().UnixNano())
	tail := callio.NewTailBuffer(lim.MaxStderrBytes)
	stdout := callio.NewTailBuffer(lim.MaxStderrBytes)
	mc := wazero.NewModuleConfig().
		WithName("").
		WithArgs(call.Tool).
		WithStdout(stdout).
		WithStderr(tail).
		WithSysWalltime().
		WithSysNanotime().
		WithRandSource(rand.Reader).
		WithFSConfig(wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(fsys, sandbox.GuestDir))
	mc = withEnv(mc, call.Env)
	mem := &callMemory{pool: s.pool, limit: limit, snap: m.snap}
	// wake interrupts the guest's sleeps (poll_oneoff) when ctx ends, so that it reaches a loop
	// check; the guest has no other blocking host call (stdin is empty, files are in memory).
	wake := make(chan struct{})
	mc = mc.WithNanosleep(func(ns int64) {
		t := time.NewTimer(time.Duration(ns))
		select {
		case <-t.C:
		case <-wake:
			t.Stop()
		}
	})
	var stopped bool
	if m.stoppable {
		stopped, err = s.runStoppable(ctx, m, mc, mem, wake)
	} else {
		disarm := context.AfterFunc(ctx, func() { close(wake) })
		if m.reactor {
			mc = mc.WithStartFunctions("_initialize", wasmbin.ReactorExport)
		}
		var mod api.Module
		mod, err = s.rtChecked.InstantiateModule(experimental.WithMemoryAllocator(ctx, mem), m.compiled, mc)
		sandbox.ToolExited(ctx)
		if mod != nil {
			mod.Close(context.WithoutCancel(ctx))
		}
		disarm()
	}
	out := sandbox.Outcome{Backend: Backend}
	var exit *sys.ExitError
	switch {
	case err == nil:
	case stopped && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return out, &isolation.Error{Kind: isolation.ErrTimeout, Message: fmt.Sprintf("stopped after %s", lim.Timeout), Stderr: tail.String()}
	case stopped:
		return out, sandbox.ContextError(ctx)
	case errors.As(err, &exit) && exit.ExitCode() == sys.ExitCodeDeadlineExceeded:
		return out, &isolation.Error{Kind: isolation.ErrTimeout, Message: fmt.Sprintf("stopped after %s", lim.Timeout), Stderr: tail.String()}
	case errors.As(err, &exit) && exit.ExitCode() == sys.ExitCodeContextCanceled:
		return out, sandbox.ContextError(ctx)
	case ctx.Err() != nil:
		return out, sandbox.ContextError(ctx)
	case errors.As(err, &exit):
		out.ExitCode = int(exit.ExitCode())
	default:
		// A trap (unreachable, out-of-bounds access, stack overflow...) ends the tool like a crash.
		out.ExitCode = 1
		fmt.Fprintf(tail, "\nwasm trap: %v", err)
	}
	out.Stderr, out.Stdout = tail.String(), stdout.String()
	if out.ExitCode != 0 && mem.denied.Load() {
		return out, &isolation.Error{Kind: isolation.ErrMemoryLimit, ExitCode: out.ExitCode, Stderr: out.Stderr,
			Message: fmt.Sprintf("the module needed more than its limit of %d MiB of linear memory", memMB)}
	}
	output, overflow := fsys.result()
	if overflow {
		return out, &isolation.Error{Kind: isolation.ErrOutputTooLarge, ExitCode: out.ExitCode, Stderr: out.Stderr,
			Message: fmt.Sprintf("the tool wrote more than %d bytes to %s", lim.MaxOutputBytes, sandbox.GuestOutputPath)}
	}
	out.Output = output
	return out, nil
}

// takeSlot waits for an instance slot, in FIFO order (a freed slot goes to the longest waiting
// sender of the channel). It returns an isolation.ErrBusy error when MaxQueued calls wait
// already or the wait reaches QueueTimeout, ctx's error when ctx ends first.
func (s *Sandbox) takeSlot(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
		return nil
	default:
	}
	if s.queued.Add(1) > int64(s.cfg.MaxQueued) {
		s.queued.Add(-1)
		return &isolation.Error{Kind: isolation.ErrBusy,
			Message: fmt.Sprintf("%d calls are already waiting for one of the %d WebAssembly instance slots", s.cfg.MaxQueued, cap(s.slots))}
	}
	defer s.queued.Add(-1)
	t := time.NewTimer(s.cfg.QueueTimeout)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-t.C:
		return &isolation.Error{Kind: isolation.ErrBusy,
			Message: fmt.Sprintf("waited %s for one of the %d WebAssembly instance slots", s.cfg.QueueTimeout, cap(s.slots))}
	case <-ctx.Done():
		return sandbox.ContextError(ctx)
	}
}

// runStoppable runs an instrumented module: instantiate without start functions, arm the stop
// flag for ctx, then call _start. stopped reports that ctx ended while the guest ran (and the
// flag was set: err is then the trap it caused). It closes wake when ctx ends.
func (s *Sandbox) runStoppable(ctx context.Context, m *module, mc wazero.ModuleConfig, mem *callMemory, wake chan struct{}) (stopped bool, err error) {
	var fired atomic.Bool
	mc = mc.WithStartFunctions().WithOsyield(yielder(&fired))
	mod, err := s.rt.InstantiateModule(experimental.WithMemoryAllocator(ctx, mem), m.compiled, mc)
	if err != nil {
		return false, err
	}
	defer func() {
		sandbox.ToolExited(ctx)
		mod.Close(context.WithoutCancel(ctx))
	}()
	entries := []string{"_start"}
	switch {
	case m.snap != nil:
		entries = []string{wasmbin.ReactorExport}
	case m.reactor:
		entries = []string{"_initialize", wasmbin.ReactorExport}
	}
	disarm, err := arm(ctx, mod, &fired, wake)
	if err != nil {
		return false, err
	}
	for _, name := range entries {
		if f := mod.ExportedFunction(name); f != nil {
			if _, err = f.Call(ctx); err != nil {
				break
			}
		}
	}
	if !disarm() && err != nil {
		// The callback ran (or is running): the error is what it did to the guest.
		return fired.Load() || ctx.Err() != nil, err
	}
	return false, err
}

// exitStopped is the exit code the host's sched_yield ends a stopped guest with; the caller
// knows from its flag why, and reports a timeout or a cancellation.
const exitStopped = sys.ExitCodeDeadlineExceeded

// yielder is an instrumented guest's sched_yield (called at least every YieldBudget loop
// iterations): it ends the guest once fired is set. Being a call into Go, it is also where the
// goroutine running the guest can be preempted.
func yielder(fired *atomic.Bool) func() {
	return func() {
		if fired.Load() {
			panic(sys.NewExitError(exitStopped))
		}
	}
}

// arm makes ctx's end stop the instrumented instance mod: set fired, zero its loop budget (so
// that it calls sched_yield at its next loop header) and close wake (to cut its sleeps short).
// disarm returns false when that already happened or is happening.
func arm(ctx context.Context, mod api.Module, fired *atomic.Bool, wake chan struct{}) (disarm func() bool, err error) {
	budget, ok := mod.ExportedGlobal(wasmbin.StopExport).(api.MutableGlobal)
	if !ok {
		return nil, errors.New("wasm: instrumented module without its loop budget")
	}
	return context.AfterFunc(ctx, func() {
		fired.Store(true)
		// A plain 8-byte store into the instance's globals, which stay valid (GC-managed) even
		// after the instance is closed; the guest reads it at every loop header.
		budget.Set(0)
		if wake != nil {
			close(wake)
		}
	}), nil
}

// initTimeout bounds a reactor's _initialize when its snapshot is captured. A module whose
// initialisation took longer is not kept as failed (a loaded host may be the cause): the next
// call tries again.
const initTimeout = 10 * time.Second

var errInitTimeout = errors.New("initialisation did not finish in time")

// snapshot is a reactor's state after _initialize: its linear memory (only the pages that are
// not zero) and its size; its mutable globals are compiled into the per-call module.
type snapshot struct {
	size   uint64
	chunks []chunk
}

type chunk struct {
	off  uint64
	data []byte
}

// restore writes the snapshot into mem, which is zero.
func (sn *snapshot) restore(mem []byte) {
	for _, c := range sn.chunks {
		copy(mem[c.off:], c.data)
	}
}

// capture runs a reactor's _initialize once and returns its state and the module that starts
// from it (wasmbin.ApplySnapshot: memory content supplied by the host, data segments dropped,
// globals initialised to their captured values). bin must be instrumented. The guest sees an
// empty /axocoatl/input.json during initialisation: its input comes with each call.
func (s *Sandbox) capture(ctx context.Context, bin []byte) (*snapshot, []byte, error) {
	exp, globals, ok, err := wasmbin.ExportGlobals(bin)
	if err != nil || !ok {
		return nil, nil, err
	}
	ctx = context.WithoutCancel(ctx)
	c, err := s.rt.CompileModule(ctx, exp)
	if err != nil {
		return nil, nil, err
	}
	defer c.Close(ctx)
	// The deadline is _initialize's, not the compile's (which takes minutes under -race).
	ctx, cancel := context.WithTimeout(ctx, initTimeout)
	defer cancel()
	tail := callio.NewTailBuffer(4096)
	var fired atomic.Bool
	mc := wazero.NewModuleConfig().WithName("").WithStartFunctions().WithOsyield(yielder(&fired)).
		WithStdout(tail).WithStderr(tail).
		WithSysWalltime().WithSysNanotime().WithRandSource(rand.Reader).
		WithFSConfig(wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(newCallFS(nil, 0, time.Now().UnixNano()), sandbox.GuestDir))
	mod, err := s.rt.InstantiateModule(ctx, c, mc)
	if err != nil {
		return nil, nil, err
	}
	defer mod.Close(ctx)
	disarm, err := arm(ctx, mod, &fired, nil)
	if err != nil {
		return nil, nil, err
	}
	_, err = mod.ExportedFunction("_initialize").Call(ctx)
	disarm()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%s)", errInitTimeout, initTimeout)
		}
		return nil, nil, fmt.Errorf("_initialize: %w (output: %q)", err, tail.String())
	}
	values := make(map[uint32]uint64, len(globals))
	for _, g := range globals {
		values[g.Index] = mod.ExportedGlobal(wasmbin.GlobalExport(g.Index)).Get()
	}
	// The loop budget starts full in every call (it is what the guest decremented meanwhile).
	delete(values, stopIndex(globals))
	mem := mod.Memory()
	if mem == nil {
		return nil, nil, errors.New("the module has no memory")
	}
	raw, _ := mem.Read(0, mem.Size())
	sn := &snapshot{size: uint64(len(raw))}
	const page = 4096
	for off := 0; off < len(raw); off += page {
		p := raw[off:min(off+page, len(raw))]
		if isZero(p) {
			continue
		}
		if k := len(sn.chunks) - 1; k >= 0 && sn.chunks[k].off+uint64(len(sn.chunks[k].data)) == uint64(off) {
			sn.chunks[k].data = append(sn.chunks[k].data, p...)
			continue
		}
		sn.chunks = append(sn.chunks, chunk{off: uint64(off), data: append([]byte(nil), p...)})
	}
	per, err := wasmbin.ApplySnapshot(bin, uint32(len(raw)/65536), values)
	if err != nil {
		return nil, nil, err
	}
	return sn, per, nil
}

// stopIndex is the index of the loop budget global: InstrumentLoops appends it last.
func stopIndex(gs []wasmbin.Global) uint32 {
	var max uint32
	for _, g := range gs {
		max = g.Index
	}
	return max
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Close waits for calls in flight, then releases compiled modules, the runtime and the memory
// pool. Idempotent.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.calls.Wait()
	err := s.closeRuntimes(context.Background())
	s.pool.close()
	return err
}
