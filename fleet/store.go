package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/fleet/internal/tarball"
	"github.com/axocoatl/isolation/fleet/internal/wire"
)

// Bucket names.
const (
	// ToolsBucket (Object Store) holds tool folders as deterministic tars, named by digest.
	ToolsBucket = "axoiso-tools"
	// CurrentBucket (KV) maps a tool name to its current digest; its history gives rollback.
	CurrentBucket = "axoiso-current"
	// InputsBucket (Object Store) holds inputs over wire.InlineInputMax for the length of a call.
	InputsBucket = "axoiso-inputs"
)

// Store is the fleet's JetStream side: published tools (see Publish, Sync) and large inputs.
type Store struct {
	cfg      StoreConfig
	js       jetstream.JetStream
	replicas int

	inputsMu sync.Mutex // protects inputs
	inputs   jetstream.ObjectStore

	changed chan struct{}
	log     *slog.Logger
	cancel  context.CancelFunc
	done    chan struct{}

	mu sync.Mutex // protects versions, byDir
	// versions: per tool name, the versions held, current first; older ones are kept for
	// Grace after they stop being current (calls routed to them still find a worker).
	versions map[string][]*version
	byDir    map[string]string // a held version's Tool.Dir → its digest
}

type version struct {
	tool    *catalog.Tool
	digest  string
	retired time.Time // zero while current
}

// heldArtifact is a verified tool version on this host.
type heldArtifact struct {
	Tool   *catalog.Tool
	Digest string
}

// Held lists the published tool versions this host holds, unpacked and verified: each tool's
// current version and those retired less than Grace ago.
func (s *Store) Held() []heldArtifact {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []heldArtifact
	for _, vs := range s.versions {
		for _, v := range vs {
			out = append(out, heldArtifact{v.tool, v.digest})
		}
	}
	return out
}

// Changed is signalled when Held changes.
func (s *Store) Changed() <-chan struct{} {
	if s == nil {
		return nil
	}
	return s.changed
}

// DigestOf is the published digest of a tool version this host holds.
func (s *Store) DigestOf(t *catalog.Tool) (string, bool) {
	if s == nil {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.byDir[t.Dir]
	return d, ok
}

// fallbackDigests are the versions of name retired less than Grace ago, newest first: a gateway
// whose workers have not all taken the current version yet sends calls there (the old version,
// whole) rather than to a weaker tier.
func (s *Store) fallbackDigests(name, current string) []string {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, v := range s.versions[name] {
		if v.digest != current {
			out = append(out, v.digest)
		}
	}
	return out
}

// inputsBucket binds the inputs bucket; a gateway (create) makes it the first time. Binding
// first: updating a replicated stream's config needs every peer, and a call must not fail
// with one server down. Inputs of a gateway that died mid-call expire after inputTTL.
func (s *Store) inputsBucket(ctx context.Context, create bool) (jetstream.ObjectStore, error) {
	s.inputsMu.Lock()
	defer s.inputsMu.Unlock()
	if s.inputs != nil {
		return s.inputs, nil
	}
	b, err := s.js.ObjectStore(ctx, InputsBucket)
	if create && errors.Is(err, jetstream.ErrBucketNotFound) {
		b, err = s.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: InputsBucket, Replicas: s.replicas, TTL: inputTTL,
			Description: "inputs over 1 MiB of fleet calls in flight"})
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", InputsBucket, err)
	}
	s.inputs = b
	return b, nil
}

// inputTTL bounds how long an input stays in the bucket when its call's gateway died before
// deleting it (longer than any call may last).
const inputTTL = 25 * time.Hour

func (s *Store) putInput(ctx context.Context, callID string, input []byte) (string, error) {
	b, err := s.inputsBucket(ctx, true)
	if err != nil {
		return "", err
	}
	if _, err := b.Put(ctx, jetstream.ObjectMeta{Name: callID}, bytes.NewReader(input)); err != nil {
		return "", err
	}
	return callID, nil
}

func (s *Store) getInput(ctx context.Context, ref string) ([]byte, error) {
	b, err := s.inputsBucket(ctx, false)
	if err != nil {
		return nil, err
	}
	r, err := b.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	// The gateway's own bound applies (the HTTP body limit); this one keeps a bad reference
	// from filling memory.
	data, err := io.ReadAll(io.LimitReader(r, maxInputBytes+1))
	if err == nil && len(data) > maxInputBytes {
		err = errors.New("input by reference over 64 MiB")
	}
	return data, err
}

const maxInputBytes = 64 << 20

func (s *Store) deleteInput(ref string) {
	s.inputsMu.Lock()
	b := s.inputs
	s.inputsMu.Unlock()
	if b != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Delete(ctx, ref); err != nil {
			s.log.Warn("input not deleted (it expires)", "ref", ref, "error", err)
		}
	}
}

// StoreConfig configures OpenStore.
type StoreConfig struct {
	// Dir holds the unpacked tool versions: Dir/.v/<digest>/<name>/ (read-only) and Dir/<name>, a
	// symlink to the current one, so Dir is a tools root (Root).
	Dir string
	// Replicas of the buckets Publish creates (default 1; 3 in a 3-node cluster).
	Replicas int
	// Grace is how long a version stays served after another became current (default 1 min).
	Grace time.Duration
	// Limits bound what a fetched tar may hold.
	Limits tarball.Limits
	Logger *slog.Logger
}

// Grace default.
const DefaultGrace = time.Minute

// OpenStore opens the fleet's JetStream side over nc. Buckets are created by Publish, bound by
// Watch.
func OpenStore(ctx context.Context, nc *nats.Conn, cfg StoreConfig) (*Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{js: js, replicas: cfg.Replicas, cfg: cfg, changed: make(chan struct{}, 1), log: cfg.Logger,
		versions: map[string][]*version{}, byDir: map[string]string{}}
	if cfg.Dir != "" {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, ".v"), 0o755); err != nil {
			return nil, err
		}
		// The catalog reports resolved folders; DigestOf compares them with ours.
		if s.cfg.Dir, err = filepath.EvalSymlinks(cfg.Dir); err != nil {
			return nil, err
		}
		if s.cfg.Dir, err = filepath.Abs(s.cfg.Dir); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Root is the tools root of the current versions.
func (s *Store) Root() string { return s.cfg.Dir }

// Publish stores the tool folder dir as a deterministic tar (named by its SHA-256) and makes it
// the current version of name. The folder must load as a tool.
func Publish(ctx context.Context, nc *nats.Conn, dir, name string, replicas int) (string, error) {
	if err := catalog.ValidateName(name); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	// Refuse what would not load on the workers (a broken manifest, an escaping entrypoint).
	parent, base := filepath.Split(abs)
	cat, err := catalog.Open(parent)
	if err != nil {
		return "", err
	}
	tool, err := cat.Get(base)
	if err != nil {
		return "", err
	}
	if tool.Base != "" {
		// The base is a bundle beside the tool, outside the folder the digest covers: shipped
		// with it, it would be a root file system in every version's tar; resolved on each
		// worker, the digest would no longer say what runs. Neither: refused.
		return "", &isolation.Error{Kind: isolation.ErrInvalidTool, Tool: name, Message: fmt.Sprintf(
			"tool.json's \"base\": %q names a bundle outside the tool folder, which a publish does not ship: install the tool and its base in the tools root of the gateway and of each worker (axoiso worker --tools DIR) instead", tool.Base)}
	}
	digest, size, err := tarball.Digest(abs, tarball.Limits{})
	if err != nil {
		return "", err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return "", err
	}
	if replicas <= 0 {
		replicas = 1
	}
	// Bind to existing buckets (an update of a replicated stream's config needs every peer: a
	// publish must work with a server down); create them the first time.
	obj, err := js.ObjectStore(ctx, ToolsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obj, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: ToolsBucket, Replicas: replicas,
			Description: "axoiso tool folders as deterministic tars, named by SHA-256"})
	}
	if err != nil {
		return "", fmt.Errorf("bucket %s: %w", ToolsBucket, err)
	}
	kv, err := js.KeyValue(ctx, CurrentBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: CurrentBucket, Replicas: replicas, History: 16,
			Description: "axoiso: the current digest of each tool"})
	}
	if err != nil {
		return "", fmt.Errorf("bucket %s: %w", CurrentBucket, err)
	}
	if info, err := obj.GetInfo(ctx, digest); err == nil && info.Size == uint64(size) {
		// Already stored (content-addressed): only the pointer moves.
	} else {
		pr, pw := io.Pipe()
		h := sha256.New()
		go func() { pw.CloseWithError(tarball.Write(io.MultiWriter(pw, h), abs, tarball.Limits{})) }()
		_, err := obj.Put(ctx, jetstream.ObjectMeta{Name: digest, Description: name}, pr)
		pr.Close()
		if err != nil {
			return "", fmt.Errorf("storing %s: %w", name, err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != digest {
			obj.Delete(ctx, digest)
			return "", fmt.Errorf("%s changed while being published (digest %s, then %s): publish it again", abs, digest, got)
		}
	}
	if _, err := kv.Put(ctx, name, []byte(digest)); err != nil {
		return "", err
	}
	return digest, nil
}

// Rollback makes the version of name before the current one current again (from the KV
// history) and returns its digest.
func Rollback(ctx context.Context, nc *nats.Conn, name string) (string, error) {
	if err := catalog.ValidateName(name); err != nil {
		return "", err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return "", err
	}
	kv, err := js.KeyValue(ctx, CurrentBucket)
	if err != nil {
		return "", err
	}
	hist, err := kv.History(ctx, name)
	if err != nil {
		return "", err
	}
	var cur string
	if n := len(hist); n > 0 && hist[n-1].Operation() == jetstream.KeyValuePut {
		cur = string(hist[n-1].Value())
	}
	for i := len(hist) - 2; i >= 0; i-- {
		if hist[i].Operation() != jetstream.KeyValuePut {
			continue
		}
		if d := string(hist[i].Value()); d != cur && wire.ValidDigest(d) {
			if _, err := kv.Put(ctx, name, []byte(d)); err != nil {
				return "", err
			}
			return d, nil
		}
	}
	return "", fmt.Errorf("tool %q has no earlier version in the history (%d entries)", name, len(hist))
}

// Watch follows the current-digest bucket in the background: each new current version is
// fetched, verified against its digest, unpacked read-only under Dir and made current; then
// Changed fires (a worker prepares and subscribes it). A bucket that does not exist yet is
// waited for. Watch returns once the versions current now are held (or after 30 s).
func (s *Store) Watch(ctx context.Context) error {
	if s.cfg.Dir == "" {
		return errors.New("fleet: StoreConfig.Dir is required to watch")
	}
	wctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	initial := make(chan struct{})
	go s.watchLoop(wctx, initial)
	select {
	case <-initial:
	case <-time.After(30 * time.Second):
		s.log.Warn("published tools not all held after 30 s; going on")
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (s *Store) watchLoop(ctx context.Context, initial chan struct{}) {
	defer close(s.done)
	var once sync.Once
	ready := func() { once.Do(func() { close(initial) }) }
	defer ready()
	retire := time.NewTicker(s.cfg.Grace / 4)
	defer retire.Stop()
	for ctx.Err() == nil {
		kv, err := s.js.KeyValue(ctx, CurrentBucket)
		if err != nil {
			// No bucket yet (nothing published) or no JetStream reachable: nothing to hold now.
			ready()
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
			continue
		}
		w, err := kv.WatchAll(ctx)
		if err != nil {
			ready()
			time.Sleep(time.Second)
			continue
		}
		s.follow(ctx, w, ready, retire.C)
		w.Stop()
	}
}

func (s *Store) follow(ctx context.Context, w jetstream.KeyWatcher, ready func(), retire <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-retire:
			s.retireOld()
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				ready() // the initial values are in
				continue
			}
			name := e.Key()
			if catalog.ValidateName(name) != nil {
				s.log.Warn("published name refused", "key", name)
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				s.drop(name)
				continue
			}
			digest := string(e.Value())
			if !wire.ValidDigest(digest) {
				s.log.Warn("published digest refused", "tool", name)
				continue
			}
			if err := s.take(ctx, name, digest); err != nil {
				s.log.Warn("published version not taken", "tool", name, "digest", digest, "error", err)
			}
		}
	}
}

// take makes digest the current version of name, fetching and verifying it if it is not here.
func (s *Store) take(ctx context.Context, name, digest string) error {
	vdir := filepath.Join(s.cfg.Dir, ".v", digest)
	if _, err := os.Stat(filepath.Join(vdir, name)); err != nil {
		if err := s.fetch(ctx, name, digest, vdir); err != nil {
			return err
		}
	}
	cat, err := catalog.Open(vdir)
	if err != nil {
		return err
	}
	tool, err := cat.Get(name)
	if err != nil {
		return err
	}
	// Dir/<name> → .v/<digest>/<name>, replaced atomically.
	link := filepath.Join(s.cfg.Dir, name)
	tmp := link + ".tmp-" + digest[:12]
	os.Remove(tmp)
	if err := os.Symlink(filepath.Join(".v", digest, name), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return err
	}
	s.mu.Lock()
	vs := s.versions[name]
	var kept []*version
	for _, v := range vs {
		if v.digest == digest {
			continue
		}
		if v.retired.IsZero() {
			v.retired = time.Now()
		}
		kept = append(kept, v)
	}
	s.versions[name] = append([]*version{{tool: tool, digest: digest}}, kept...)
	s.byDir[tool.Dir] = digest
	s.mu.Unlock()
	s.log.Info("tool version current", "tool", name, "digest", digest)
	s.signal()
	return nil
}

// fetch downloads the tar of digest, checks its SHA-256 and unpacks it into vdir/name.
func (s *Store) fetch(ctx context.Context, name, digest, vdir string) error {
	obj, err := s.js.ObjectStore(ctx, ToolsBucket)
	if err != nil {
		return err
	}
	lim := s.cfg.Limits
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = tarball.DefaultMaxBytes
	}
	info, err := obj.GetInfo(ctx, digest)
	if err != nil {
		return err
	}
	// Headers and padding: a tar is larger than its files, bounded by entries × 1.5 KiB.
	if info.Size > uint64(lim.MaxBytes)+uint64(tarball.DefaultMaxEntries)*1536 {
		return fmt.Errorf("the tar is %d bytes, over the limit", info.Size)
	}
	r, err := obj.Get(ctx, digest)
	if err != nil {
		return err
	}
	defer r.Close()
	// Spool to a file while hashing: nothing is unpacked before the digest is verified.
	f, err := os.CreateTemp(filepath.Join(s.cfg.Dir, ".v"), "fetch-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, int64(info.Size)+1))
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != digest || uint64(n) != info.Size {
		return fmt.Errorf("the tar's SHA-256 is %s, not %s: refused", got, digest)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	stage, err := os.MkdirTemp(filepath.Join(s.cfg.Dir, ".v"), digest[:12]+"-")
	if err != nil {
		return err
	}
	if err := tarball.Extract(f, filepath.Join(stage, name), lim); err != nil {
		tarball.RemoveAll(stage)
		return err
	}
	os.Chmod(stage, 0o755)
	if err := os.Rename(stage, vdir); err != nil {
		tarball.RemoveAll(stage)
		if _, serr := os.Stat(filepath.Join(vdir, name)); serr == nil {
			return nil // another name with the same content got there first
		}
		return err
	}
	return nil
}

// drop forgets name (deleted from the bucket): its versions retire.
func (s *Store) drop(name string) {
	os.Remove(filepath.Join(s.cfg.Dir, name))
	s.mu.Lock()
	for _, v := range s.versions[name] {
		if v.retired.IsZero() {
			v.retired = time.Now()
		}
	}
	s.mu.Unlock()
	s.signal()
}

// retireOld forgets versions retired more than Grace ago and removes their folders.
func (s *Store) retireOld() {
	cutoff := time.Now().Add(-s.cfg.Grace)
	var gone []*version
	s.mu.Lock()
	for name, vs := range s.versions {
		var kept []*version
		for _, v := range vs {
			if !v.retired.IsZero() && v.retired.Before(cutoff) {
				gone = append(gone, v)
				delete(s.byDir, v.tool.Dir)
				continue
			}
			kept = append(kept, v)
		}
		if len(kept) == 0 {
			delete(s.versions, name)
		} else {
			s.versions[name] = kept
		}
	}
	inUse := map[string]bool{}
	for _, vs := range s.versions {
		for _, v := range vs {
			inUse[v.digest] = true
		}
	}
	s.mu.Unlock()
	if len(gone) == 0 {
		return
	}
	s.signal()
	for _, v := range gone {
		if !inUse[v.digest] {
			// Calls already running keep their open files; the folder goes.
			tarball.RemoveAll(filepath.Join(s.cfg.Dir, ".v", v.digest))
		}
	}
}

func (s *Store) signal() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Close stops watching.
func (s *Store) Close() error {
	if s.cancel != nil {
		s.cancel()
		<-s.done
	}
	return nil
}
