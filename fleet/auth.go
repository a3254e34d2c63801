package fleet

import (
	"bytes"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// NKeySeedOption authenticates a connection with an nkey user seed (the "SU…" text of a seed
// file): the server knows only the public key, and the seed never leaves this host.
func NKeySeedOption(seed []byte) (nats.Option, error) {
	kp, err := nkeys.FromSeed(bytes.TrimSpace(seed))
	if err != nil {
		return nil, err
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	return nats.Nkey(pub, func(nonce []byte) ([]byte, error) { return kp.Sign(nonce) }), nil
}
