package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"

	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/fleet/internal/tarball"
)

// Digests computes and remembers tool digests: the SHA-256 of a tool folder's deterministic tar
// (the same bytes `axoiso tool publish` stores), so a gateway and a worker that read the same
// folder agree on the subject without asking each other. A built-in's digest is derived from its
// name. Safe for concurrent use; bounded.
type Digests struct {
	mu sync.Mutex // protects m
	// m is keyed by the *catalog.Tool, which the catalog replaces when the folder changes.
	m map[*catalog.Tool]string
}

// maxDigests bounds the cache; past it the cache starts over (tools are few, versions churn).
const maxDigests = 4096

// NewDigests returns an empty cache.
func NewDigests() *Digests { return &Digests{m: map[*catalog.Tool]string{}} }

// Of returns t's digest.
func (d *Digests) Of(t *catalog.Tool) (string, error) {
	d.mu.Lock()
	s, ok := d.m[t]
	d.mu.Unlock()
	if ok {
		return s, nil
	}
	if t.Dir == "" {
		h := sha256.Sum256([]byte("axoiso-builtin\x00" + t.Name))
		s = hex.EncodeToString(h[:])
	} else {
		var err error
		if s, _, err = tarball.Digest(t.Dir, tarball.Limits{}); err != nil {
			return "", err
		}
	}
	d.Set(t, s)
	return s, nil
}

// Set records a digest known otherwise (a tool unpacked from the store after verifying it).
func (d *Digests) Set(t *catalog.Tool, digest string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.m) >= maxDigests {
		clear(d.m)
	}
	d.m[t] = digest
}
