package fleet

import (
	"bytes"
	"context"
	"errors"
	"io"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/axocoatl/isolation/catalog"
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

	inputs jetstream.ObjectStore

	held    func() []heldArtifact
	changed chan struct{}
	digest  func(*catalog.Tool) (string, bool)
}

// heldArtifact is a verified tool version on this host.
type heldArtifact struct {
	Tool   *catalog.Tool
	Digest string
}

// Held lists the published tool versions this host holds, unpacked and verified.
func (s *Store) Held() []heldArtifact {
	if s == nil || s.held == nil {
		return nil
	}
	return s.held()
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
	if s == nil || s.digest == nil {
		return "", false
	}
	return s.digest(t)
}

func (s *Store) inputsBucket(ctx context.Context) (jetstream.ObjectStore, error) {
	if s.inputs != nil {
		return s.inputs, nil
	}
	os, err := s.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: InputsBucket, Replicas: s.replicas,
		Description: "inputs over 1 MiB of fleet calls in flight"})
	if err != nil {
		return nil, err
	}
	s.inputs = os
	return os, nil
}

func (s *Store) putInput(ctx context.Context, callID string, input []byte) (string, error) {
	b, err := s.inputsBucket(ctx)
	if err != nil {
		return "", err
	}
	if _, err := b.Put(ctx, jetstream.ObjectMeta{Name: callID}, bytes.NewReader(input)); err != nil {
		return "", err
	}
	return callID, nil
}

func (s *Store) getInput(ctx context.Context, ref string) ([]byte, error) {
	b, err := s.inputsBucket(ctx)
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
	if s.inputs != nil {
		s.inputs.Delete(context.Background(), ref)
	}
}

// StoreConfig configures OpenStore.
type StoreConfig struct {
	// Dir holds the unpacked tool versions (a tools root of symlinks to verified versions).
	Dir string
	// Replicas of the buckets this store creates (default 1; 3 in a 3-node cluster).
	Replicas int
}

// OpenStore opens the fleet's buckets over nc.
func OpenStore(ctx context.Context, nc *nats.Conn, cfg StoreConfig) (*Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	return &Store{js: js, replicas: cfg.Replicas, cfg: cfg, changed: make(chan struct{}, 1)}, nil
}

// Watch follows the current-digest bucket (stub until tool distribution lands).
func (s *Store) Watch(ctx context.Context) error { return nil }

// Close stops watching.
func (s *Store) Close() error { return nil }
