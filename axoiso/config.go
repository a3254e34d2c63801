package axoiso

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/internal/tracing/otlp"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/sandbox/wasm"
)

// Defaults. The tools root is also the Oci tier's bundle_root: a folder of tool folders, each a
// tool.json tool or an OCI bundle.
const (
	DefaultToolsRoot  = "/var/axocoatl/bundles"
	DefaultStateRoot  = "/run/axocoatl/oci"
	DefaultConfigPath = "/etc/axocoatl/axoiso.json"
	EnvTools          = "AXOISO_TOOLS"
	EnvConfig         = "AXOISO_CONFIG"
)

// defaultToolsRoot is DefaultToolsRoot; tests change it.
var defaultToolsRoot = DefaultToolsRoot

// Config is the whole configuration. JSON field names are the config file's.
type Config struct {
	// ToolsRoot is the tools root (= the Oci tier's bundle_root).
	ToolsRoot string `json:"tools_root,omitempty"`
	// Strict refuses downgrades to a weaker tier.
	Strict bool `json:"strict,omitempty"`
	// The operator's ceilings on what a tool may ask for (executor.Config has the details): a
	// request above one gets the ceiling, and the call's result and log record say so.
	//
	// MaxOutputBytes bounds output.json (default 1 MiB).
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty"`
	// DefaultTimeout applies to tools without timeout_ms (default 10s); MaxTimeout is the ceiling
	// of every call's timeout (default 60s, in every command).
	DefaultTimeout Duration `json:"default_timeout,omitempty"`
	MaxTimeout     Duration `json:"max_timeout,omitempty"`
	// MaxMemoryMB is the memory_mb ceiling per tier, by wire name (defaults: Wasmtime 256, Oci
	// 1024, Firecracker 1024).
	MaxMemoryMB map[isolation.Tier]int `json:"max_memory_mb,omitempty"`
	// CacheDir holds compiled Wasm modules (default $XDG_CACHE_HOME/axoiso or /var/cache/axocoatl).
	CacheDir string `json:"cache_dir,omitempty"`
	// DataDir holds the microVM kernel and guest root (default /var/lib/axocoatl or
	// $XDG_DATA_HOME/axoiso).
	DataDir string `json:"data_dir,omitempty"`
	// Wasm is the Wasmtime tier's configuration.
	Wasm WasmConfig `json:"wasm"`
	// Oci is the Oci tier's configuration (the original's field names).
	Oci OciConfig `json:"oci"`
	// VM is the microVM tier's configuration.
	VM VMConfig `json:"vm"`
	// DisableTiers lists tiers (wire names) not to use at all.
	DisableTiers []string `json:"disable_tiers,omitempty"`
	// Isolation chooses the tier a runtime requirement's tools start in, instead of its ideal
	// one: {"ContainerImage": "Firecracker"} runs container images in microVMs (Oci and
	// Firecracker are the choices for ContainerImage, Python, Shell and Arbitrary). The chosen
	// tier is the call's ideal tier: falling back to a weaker one is a downgrade. ToolIsolation
	// does the same per tool name, and wins.
	Isolation     map[isolation.RuntimeRequirement]isolation.Tier `json:"isolation,omitempty"`
	ToolIsolation map[string]isolation.Tier                       `json:"tool_isolation,omitempty"`
	// Serve configures axoiso serve's connections; its flags win.
	Serve ServeConfig `json:"serve"`
	// Fleet configures serve --nats, worker, fleet and tool (package fleet); their flags win.
	Fleet FleetConfig `json:"fleet"`
	// Secrets grants environment variables to tools by name, with values from files or the
	// daemon's environment: {"fetcher": {"API_KEY": {"file": "/etc/axocoatl/k"}}}. A secret
	// reaches only the tools it is granted to, in every tier, and is hidden in their stdout and
	// stderr tails and error text (see executor.Config.Secrets).
	Secrets map[string]map[string]SecretSource `json:"secrets,omitempty"`
	// Egress configures the gate of tools with a network policy.
	Egress EgressConfig `json:"egress"`
	// Tracing sends OpenTelemetry spans of every call to an OTLP receiver (off by default).
	Tracing TracingConfig `json:"tracing"`

	// The fields below are for programs that embed the executor (New); they are not part of the
	// config file.
	//
	// Logger receives the executor's and the tiers' logs (nothing is logged when nil).
	Logger *slog.Logger `json:"-"`
	// NativeTools are Go functions run in this process (the None tier: no isolation, for code
	// you trust), besides the built-ins echo and json-stats.
	NativeTools []native.Tool `json:"-"`
	// WasmTools are Wasm tools whose modules are in memory: they need no tool folder. With
	// either list set and no tools root given (ToolsRoot, oci.bundle_root, $AXOISO_TOOLS), a
	// missing default root is no error: the executor then has no tool folders. A tool folder
	// of the same name as a registered tool shadows it; a name registered twice is an error.
	WasmTools []wasm.Tool `json:"-"`
	// TracerProvider receives the executor's spans (executor.Config.TracerProvider), instead of
	// the one Tracing would build: a program with its own OpenTelemetry set-up passes it here.
	// The program shuts it down; the executor does not.
	TracerProvider trace.TracerProvider `json:"-"`
}

// TracingConfig sends a span per call and per phase of it (catalog, select, setup, run,
// teardown; see package executor) to an OTLP receiver. A call that arrives with a W3C
// traceparent (HTTP header, MCP _meta or header, `axoiso run --traceparent`) joins that trace.
type TracingConfig struct {
	// OTLPEndpoint is the receiver's URL: http://host:4318 for OTLP/HTTP (path /v1/traces
	// unless the URL has one), http://host:4317 for gRPC; https:// uses TLS. Empty: tracing off,
	// and it costs nothing.
	OTLPEndpoint string `json:"otlp_endpoint,omitempty"`
	// Protocol is "http" (protobuf over HTTP, the default) or "grpc".
	Protocol string `json:"protocol,omitempty"`
	// SampleRatio is the share of new traces recorded, in (0, 1] (0: 1, every call); a call
	// with a traceparent follows the caller's sampled flag.
	SampleRatio float64 `json:"sample_ratio,omitempty"`
}

// check says what is wrong with the tracing keys, naming them.
func (t TracingConfig) check() error {
	if t == (TracingConfig{}) {
		return nil
	}
	if t.OTLPEndpoint == "" {
		return errors.New("tracing.otlp_endpoint: missing (tracing.protocol and tracing.sample_ratio do nothing without it)")
	}
	return t.exporter(nil).Check()
}

// exporter is the exporter's configuration.
func (t TracingConfig) exporter(log *slog.Logger) otlp.Config {
	return otlp.Config{Endpoint: t.OTLPEndpoint, Protocol: t.Protocol, SampleRatio: t.SampleRatio, Logger: log}
}

// FleetConfig is the fleet's part of the config file.
type FleetConfig struct {
	// NATS is the NATS server URL(s), comma-separated, or "embedded": an in-process nats-server
	// with no port, a gateway and a worker in one process. Empty: serve runs calls here, without
	// NATS.
	NATS string `json:"nats,omitempty"`
	// NKeySeedFile holds this process's nkey user seed; CredsFile a JWT user credentials file;
	// TLSCA, TLSCert and TLSKey the TLS trust and client certificate.
	NKeySeedFile string `json:"nkey_seed_file,omitempty"`
	CredsFile    string `json:"creds_file,omitempty"`
	TLSCA        string `json:"tls_ca,omitempty"`
	TLSCert      string `json:"tls_cert,omitempty"`
	TLSKey       string `json:"tls_key,omitempty"`
	// Slots bounds a worker's calls at once per tier (wire names).
	Slots map[isolation.Tier]int `json:"slots,omitempty"`
	// StoreDir holds the published tool versions a worker or gateway unpacked (default
	// {data_dir}/fleet).
	StoreDir string `json:"store_dir,omitempty"`
	// Replicas of the buckets `axoiso tool publish` creates (default 1).
	Replicas int `json:"replicas,omitempty"`
	// AcceptWindow, HeartbeatTimeout and Heartbeat tune at-most-once (defaults 60ms, 1s, 200ms).
	AcceptWindow     Duration `json:"accept_window,omitempty"`
	HeartbeatTimeout Duration `json:"heartbeat_timeout,omitempty"`
	Heartbeat        Duration `json:"heartbeat,omitempty"`
}

// WasmConfig bounds the Wasmtime tier's queue and its cache of compiled modules (0: the tier's
// default).
type WasmConfig struct {
	// MaxConcurrency caps the instances running at once (default: the CPUs Go uses, GOMAXPROCS);
	// the other calls queue.
	MaxConcurrency int `json:"max_concurrency,omitempty"`
	// MaxQueued caps the calls waiting for an instance (default 64 per instance; negative: none
	// wait) and QueueTimeout their wait (default 2s; negative: no wait): past either a call is
	// busy. A call's timeout starts when it leaves the queue.
	MaxQueued    int      `json:"max_queued,omitempty"`
	QueueTimeout Duration `json:"queue_timeout,omitempty"`
	// MaxModules and MaxModuleMB bound the compiled modules kept in memory (defaults 64 and
	// 1024), least recently used closed first.
	MaxModules  int   `json:"max_modules,omitempty"`
	MaxModuleMB int64 `json:"max_module_mb,omitempty"`
	// HTTP bounds the http_request host function of tools with a network policy.
	HTTP WasmHTTPConfig `json:"http,omitzero"`
}

// WasmHTTPConfig bounds the Wasm tier's http_request host function (0: the default; README:
// Network egress).
type WasmHTTPConfig struct {
	// MaxRequestBytes and MaxResponseBytes bound a request's and a response's body (defaults
	// 1 MiB and 4 MiB, at most 1 GiB); a larger response is an error of kind "too_large".
	MaxRequestBytes  int64 `json:"max_request_bytes,omitempty"`
	MaxResponseBytes int64 `json:"max_response_bytes,omitempty"`
	// MaxRequests bounds the requests of one call (default 64), MaxRedirects the redirects
	// followed per request (default 5).
	MaxRequests  int `json:"max_requests,omitempty"`
	MaxRedirects int `json:"max_redirects,omitempty"`
	// Timeout bounds one request, redirects included (default 10s; never past the call's own
	// timeout).
	Timeout Duration `json:"timeout,omitempty"`
	// CAFile is a PEM file of certificates https servers are verified against besides the host's
	// roots (an internal CA); "" trusts the host's roots only.
	CAFile string `json:"ca_file,omitempty"`
}

// maxCAFileBytes bounds wasm.http.ca_file (the host's whole bundle is ~200 KiB).
const maxCAFileBytes = 4 << 20

// rootCAs returns the pool https servers are verified against: nil (the host's roots) without
// CAFile, else the host's roots plus CAFile's certificates.
func (h WasmHTTPConfig) rootCAs() (*x509.CertPool, error) {
	if h.CAFile == "" {
		return nil, nil
	}
	f, err := os.Open(h.CAFile)
	if err != nil {
		return nil, fmt.Errorf("config wasm.http.ca_file: %w", err)
	}
	defer f.Close()
	pem, err := io.ReadAll(io.LimitReader(f, maxCAFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config wasm.http.ca_file: %w", err)
	}
	if len(pem) > maxCAFileBytes {
		return nil, fmt.Errorf("config wasm.http.ca_file %s: over %d bytes", h.CAFile, maxCAFileBytes)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("config wasm.http.ca_file %s: no PEM certificate in it", h.CAFile)
	}
	return pool, nil
}

// ServeConfig bounds what clients of axoiso serve may hold (0: the server's default; negative:
// no bound).
type ServeConfig struct {
	ReadHeaderTimeout Duration `json:"read_header_timeout,omitempty"`
	BodyTimeout       Duration `json:"body_timeout,omitempty"`
	IdleTimeout       Duration `json:"idle_timeout,omitempty"`
	MaxMCPSessions    int      `json:"max_mcp_sessions,omitempty"`
}

// OciConfig keeps the original's fields and defaults (state_root, bundle_root, use_systemd).
type OciConfig struct {
	StateRoot  string `json:"state_root,omitempty"`
	BundleRoot string `json:"bundle_root,omitempty"`
	UseSystemd bool   `json:"use_systemd,omitempty"`
	// Backend: "libcontainer" (embedded, default), "crun" or "runc".
	Backend string `json:"backend,omitempty"`
	// RuntimeBinary is the crun/runc executable for those backends (default: from PATH).
	RuntimeBinary string `json:"runtime_binary,omitempty"`
	// RuntimeRoot is the root filesystem Python, Shell and Arbitrary tools run on in this tier
	// (default: the guest root `axoiso vm prepare` built, when it exists).
	RuntimeRoot string `json:"runtime_root,omitempty"`
	// PoolSize is the number of pre-created containers per tool (0: the tier's default of 2;
	// negative: no pools). PoolIdle empties an unused pool.
	PoolSize int      `json:"pool_size,omitempty"`
	PoolIdle Duration `json:"pool_idle,omitempty"`
	// PoolMaxTotal and PoolMaxMemoryMB bound the warm containers of all tools together (by count
	// and by the sum of their memory limits; defaults 32 and 2048, negative: no bound), shared
	// fairly, the least recently used tool's pool shrinking first.
	PoolMaxTotal    int `json:"pool_max_total,omitempty"`
	PoolMaxMemoryMB int `json:"pool_max_memory_mb,omitempty"`
	// Default limits (a tool's memory_mb wins for memory).
	MemoryMB int     `json:"memory_mb,omitempty"`
	Pids     int64   `json:"pids,omitempty"`
	CPUs     float64 `json:"cpus,omitempty"`
	// IOSizeMB caps each call's I/O dir (/axocoatl, a tmpfs of its own) beyond the input
	// (default 4; at least twice the output cap).
	IOSizeMB int `json:"io_size_mb,omitempty"`
	// IDUser owns the /etc/subuid and /etc/subgid ranges containers' user namespaces come from
	// (default "axocoatl", registered at start when absent); IDSlots bounds the containers that
	// exist at once, 65536 ids each (default 1024).
	IDUser  string `json:"id_user,omitempty"`
	IDSlots int    `json:"id_slots,omitempty"`
}

// VMConfig configures the microVM tier.
type VMConfig struct {
	// PoolSize is the number of pre-booted VMs kept ready (0: no pool).
	PoolSize int `json:"pool_size,omitempty"`
	// Snapshot starts VMs by restoring a snapshot taken at READY.
	Snapshot bool `json:"snapshot,omitempty"`
	// PoolIdle drains a VM shape's pool and removes its snapshot after this long unused
	// (default 5m; negative: never).
	PoolIdle Duration `json:"pool_idle,omitempty"`
	// MaxShapes bounds the VM shapes (memory sizes) with a pool or snapshot (default 4).
	MaxShapes int `json:"max_shapes,omitempty"`
	// PoolMaxTotal and PoolMaxMemoryMB bound the pooled VMs of all shapes together (by count and
	// by guest memory; defaults 4 and 2048, negative: no bound), shared as for Oci.
	PoolMaxTotal    int `json:"pool_max_total,omitempty"`
	PoolMaxMemoryMB int `json:"pool_max_memory_mb,omitempty"`
	// KernelArgs are appended to the guest kernel's command line (a later parameter overrides an
	// earlier one: "mitigations=auto" turns the guest's side-channel mitigations back on).
	KernelArgs string `json:"kernel_args,omitempty"`
	// KVM: "auto" (use /dev/kvm when it works), "on" or "off" (default "off": software emulation;
	// some hosts expose a /dev/kvm that cannot run an ordinary guest kernel).
	KVM string `json:"kvm,omitempty"`
	// Firecracker is the firecracker binary (default: "firecracker" in PATH).
	Firecracker string `json:"firecracker,omitempty"`
	// VCPUs per VM (default 1).
	VCPUs int `json:"vcpus,omitempty"`
	// RunDir holds per-VM sockets and pidfiles (default /run/axocoatl/vm as root).
	RunDir string `json:"run_dir,omitempty"`
	// Jailer runs Firecracker through its jailer (chroot, an unprivileged uid/gid, cgroup
	// limits).
	Jailer JailerConfig `json:"jailer,omitzero"`
	// DriveCacheMB caps the root drives of image tools (a container image's or a base image's
	// rootfs as a read-only ext4 image, kept under data_dir/vm/drives by content digest; default
	// 4096; negative: no cap). Least recently used drives go first; drives in use stay.
	DriveCacheMB int `json:"drive_cache_mb,omitempty"`
}

// JailerConfig configures Firecracker's jailer.
type JailerConfig struct {
	// Mode: "auto" (default: on when the daemon runs as root and a jailer binary is found beside
	// the firecracker binary or in PATH), "on" (Firecracker is unavailable without it) or "off".
	Mode string `json:"mode,omitempty"`
	// Binary is the jailer (default: "jailer" beside the firecracker binary, then in PATH).
	Binary string `json:"binary,omitempty"`
	// UID and GID the VMM drops to (default DefaultJailerID for both).
	UID int `json:"uid,omitempty"`
	GID int `json:"gid,omitempty"`
	// ChrootBaseDir is where the jails are built (default /srv/jailer).
	ChrootBaseDir string `json:"chroot_base_dir,omitempty"`
}

// isolationChoice checks Isolation and ToolIsolation: a tier that can run the requirement (Oci or
// Firecracker for ContainerImage and the script runtimes, the ideal tier for the others), tool
// names that are names.
func (c Config) isolationChoice() error {
	ok := func(req isolation.RuntimeRequirement, t isolation.Tier) bool {
		switch req {
		case isolation.RequireContainerImage, isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary:
			return t == isolation.TierOCI || t == isolation.TierMicroVM
		}
		return t == req.IdealTier()
	}
	for req, t := range c.Isolation {
		if !ok(req, t) {
			return fmt.Errorf("isolation: %s tools cannot run in %s", req, t)
		}
	}
	for name, t := range c.ToolIsolation {
		if err := catalog.ValidateName(name); err != nil {
			return fmt.Errorf("tool_isolation: %w", err)
		}
		if t != isolation.TierOCI && t != isolation.TierMicroVM {
			return fmt.Errorf("tool_isolation: %s: choose Oci or Firecracker (a tool's own requirement decides the other tiers)", name)
		}
	}
	return nil
}

// Duration is a time.Duration written as "10s" in JSON.
type Duration time.Duration

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

// LoadConfig reads the config file at path; a missing file at the default path is an empty config.
// A key Config does not have, a value of the wrong type or a name outside its set (a tier in
// disable_tiers) is a *ConfigError naming the key.
func LoadConfig(path string) (Config, error) {
	c, _, err := ReadConfig(path)
	return c, err
}

// ConfigFile says where a config came from.
type ConfigFile struct {
	// Path is the file read (or looked for: the default path, absent).
	Path string
	// Present is false when no file was found at the default path.
	Present bool
	// Keys are the keys the file sets (a map or a list is one key).
	Keys []string
}

// ReadConfig is LoadConfig, also saying which file was read and which keys it set.
func ReadConfig(path string) (Config, ConfigFile, error) {
	explicit := path != ""
	if path == "" {
		path = os.Getenv(EnvConfig)
		explicit = path != ""
	}
	if path == "" {
		path = DefaultConfigPath
	}
	var c Config
	src := ConfigFile{Path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return c, src, nil
	}
	if err != nil {
		return c, src, fmt.Errorf("config: %w", err)
	}
	src.Present = true
	problems, keys := checkConfig(b)
	if len(problems) == 0 {
		var sc struct {
			Secrets map[string]map[string]SecretSource `json:"secrets"`
		}
		if json.Unmarshal(b, &sc) == nil {
			problems = (Config{Secrets: sc.Secrets}).checkSecrets()
		}
	}
	if len(problems) > 0 {
		return c, src, &ConfigError{File: path, Problems: problems}
	}
	src.Keys = keys
	if err := json.Unmarshal(b, &c); err != nil {
		// checkConfig accepted it: only a case the walk does not know gets here.
		return c, src, fmt.Errorf("config %s: %w", path, err)
	}
	if err := c.Tracing.check(); err != nil {
		return c, src, &ConfigError{File: path, Problems: []string{err.Error()}}
	}
	return c, src, nil
}

// WithDefaults fills what is unset: environment first, then built-in defaults.
func (c Config) WithDefaults() Config {
	if c.ToolsRoot == "" {
		c.ToolsRoot = os.Getenv(EnvTools)
	}
	if c.ToolsRoot == "" {
		c.ToolsRoot = c.Oci.BundleRoot
	}
	if c.ToolsRoot == "" {
		c.ToolsRoot = defaultToolsRoot
	}
	c.Oci.BundleRoot = c.ToolsRoot
	if c.Oci.StateRoot == "" {
		c.Oci.StateRoot = runtimeDir(DefaultStateRoot, "oci")
	}
	if c.VM.RunDir == "" {
		c.VM.RunDir = runtimeDir("/run/axocoatl/vm", "vm")
	}
	if c.CacheDir == "" {
		c.CacheDir = defaultDir("XDG_CACHE_HOME", ".cache", "/var/cache/axocoatl")
	}
	if c.DataDir == "" {
		c.DataDir = defaultDir("XDG_DATA_HOME", ".local/share", "/var/lib/axocoatl")
	}
	return c
}

// runtimeDir is rootDefault for root, else a per-user directory under $XDG_RUNTIME_DIR (or the
// temp dir): /run/axocoatl is root's.
func runtimeDir(rootDefault, name string) string {
	if os.Geteuid() == 0 {
		return rootDefault
	}
	base := os.Getenv("XDG_RUNTIME_DIR")
	if base == "" {
		base = filepath.Join(os.TempDir(), fmt.Sprintf("axoiso-%d", os.Geteuid()))
	}
	return filepath.Join(base, "axoiso", name)
}

func defaultDir(env, homeRel, rootDefault string) string {
	if os.Geteuid() == 0 {
		return rootDefault
	}
	if d := os.Getenv(env); d != "" {
		return filepath.Join(d, "axoiso")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, homeRel, "axoiso")
	}
	return filepath.Join(os.TempDir(), "axoiso")
}
