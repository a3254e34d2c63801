package fleet

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"
)

// ConnectConfig is a process's NATS credentials (see the README's secure deployment).
type ConnectConfig struct {
	// NKeySeedFile holds an nkey user seed (nk -gen user); CredsFile a JWT user's credentials.
	NKeySeedFile string
	CredsFile    string
	// TLSCA verifies the server; TLSCert and TLSKey are a client certificate (mutual TLS).
	TLSCA, TLSCert, TLSKey string
	Logger                 *slog.Logger
}

// Connect dials url (comma-separated for a cluster) and reconnects forever: a fleet process
// outlives the loss of any one server.
func Connect(url, name string, o ConnectConfig) (*nats.Conn, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond),
		nats.PingInterval(2 * time.Second), nats.MaxPingsOutstanding(2),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { log.Warn("NATS disconnected", "error", err) }),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("NATS reconnected", "server", nc.ConnectedUrl()) })}
	if o.NKeySeedFile != "" {
		seed, err := os.ReadFile(o.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("nkey seed: %w", err)
		}
		opt, err := NKeySeedOption(seed)
		if err != nil {
			return nil, fmt.Errorf("nkey seed %s: %w", o.NKeySeedFile, err)
		}
		opts = append(opts, opt)
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	if o.TLSCert != "" || o.TLSKey != "" {
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	return nats.Connect(url, opts...)
}
