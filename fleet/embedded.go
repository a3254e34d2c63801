package fleet

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Embedded is an in-process nats-server with no listening port: `serve --nats embedded` runs the
// gateway and a worker in one process on it, so one host exercises the fleet's code path.
type Embedded struct {
	srv      *server.Server
	storeDir string
	ownStore bool
}

// EmbeddedConfig configures StartEmbedded.
type EmbeddedConfig struct {
	// JetStream enables JetStream (the tool and input buckets) with its files under StoreDir
	// (default: a temporary directory removed by Close).
	JetStream bool
	StoreDir  string
}

// StartEmbedded starts the server and waits until it takes connections.
func StartEmbedded(cfg EmbeddedConfig) (*Embedded, error) {
	e := &Embedded{storeDir: cfg.StoreDir}
	opts := &server.Options{ServerName: "axoiso-embedded", DontListen: true, NoSigs: true, NoLog: true, MaxPayload: 8 << 20}
	if cfg.JetStream {
		if e.storeDir == "" {
			d, err := os.MkdirTemp("", "axoiso-nats-")
			if err != nil {
				return nil, err
			}
			e.storeDir, e.ownStore = d, true
		}
		opts.JetStream, opts.StoreDir = true, e.storeDir
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		e.cleanup()
		return nil, fmt.Errorf("fleet: embedded nats-server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		e.cleanup()
		return nil, errors.New("fleet: the embedded nats-server did not start within 10 s")
	}
	e.srv = srv
	return e, nil
}

// Connect opens an in-process connection (no socket).
func (e *Embedded) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect("", append([]nats.Option{nats.InProcessServer(e.srv), nats.Name(name)}, opts...)...)
}

// Close shuts the server down (its connections close) and removes a temporary store.
func (e *Embedded) Close() error {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.cleanup()
	return nil
}

func (e *Embedded) cleanup() {
	if e.ownStore {
		os.RemoveAll(e.storeDir)
	}
}
