// Package fcapi is a small typed client for Firecracker's HTTP API over its unix socket, written
// from the v1.17 OpenAPI spec (the Go SDK is not on the module proxy). Only the firecracker driver
// uses it: the request bodies and their validation are not part of this module's API.
package fcapi

// The request and response bodies of the API, field names exactly as in the spec's definitions.
// Optional fields are omitted when zero so that Firecracker applies its defaults.

// BootSource is the spec's BootSource (PUT /boot-source, pre-boot only).
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// HugePages is the spec's MachineConfiguration.huge_pages enum.
type HugePages string

const (
	HugePagesNone        HugePages = "None"
	HugePagesTransparent HugePages = "Transparent"
	HugePages2M          HugePages = "2M"
)

// MachineConfig is the spec's MachineConfiguration (PUT /machine-config, pre-boot only).
type MachineConfig struct {
	VcpuCount       int       `json:"vcpu_count"`
	MemSizeMib      int       `json:"mem_size_mib"`
	SMT             bool      `json:"smt,omitempty"`
	TrackDirtyPages bool      `json:"track_dirty_pages,omitempty"`
	HugePages       HugePages `json:"huge_pages,omitempty"`
}

// CacheType is the spec's Drive.cache_type enum.
type CacheType string

const (
	CacheUnsafe    CacheType = "Unsafe"
	CacheWriteback CacheType = "Writeback"
)

// Drive is the spec's Drive for a virtio-block device (PUT /drives/{drive_id}, pre-boot only).
type Drive struct {
	DriveID      string    `json:"drive_id"`
	IsRootDevice bool      `json:"is_root_device"`
	IsReadOnly   bool      `json:"is_read_only"`
	PathOnHost   string    `json:"path_on_host"`
	PartUUID     string    `json:"partuuid,omitempty"`
	CacheType    CacheType `json:"cache_type,omitempty"`
	// IOEngine is "Sync" or "Async"; empty means Firecracker's default (Sync).
	IOEngine string `json:"io_engine,omitempty"`
}

// NetworkInterface is the spec's NetworkInterface (PUT /network-interfaces/{iface_id},
// pre-boot only): a virtio-net device backed by the tap HostDevName, which Firecracker opens by
// name in its own network namespace.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is the spec's Vsock (PUT /vsock, pre-boot only). Host-initiated connections go through
// UDSPath; guest-initiated ones to port P arrive on UDSPath + "_P".
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// TokenBucket is the spec's TokenBucket.
type TokenBucket struct {
	Size         int64 `json:"size"`
	RefillTime   int64 `json:"refill_time"`
	OneTimeBurst int64 `json:"one_time_burst,omitempty"`
}

// RateLimiter is the spec's RateLimiter.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// EntropyDevice is the spec's EntropyDevice (PUT /entropy, pre-boot only): a virtio-rng device,
// so clones restored from one snapshot can reseed from the host.
type EntropyDevice struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// Logger is the spec's Logger (PUT /logger).
type Logger struct {
	LogPath       string `json:"log_path,omitempty"`
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
}

// Metrics is the spec's Metrics (PUT /metrics).
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// ActionType is the spec's InstanceActionInfo.action_type enum.
type ActionType string

const (
	ActionInstanceStart  ActionType = "InstanceStart"
	ActionSendCtrlAltDel ActionType = "SendCtrlAltDel"
	ActionFlushMetrics   ActionType = "FlushMetrics"
)

type instanceActionInfo struct {
	ActionType ActionType `json:"action_type"`
}

// VMState is the spec's Vm.state enum (PATCH /vm).
type VMState string

const (
	VMPaused  VMState = "Paused"
	VMResumed VMState = "Resumed"
)

type vmBody struct {
	State VMState `json:"state"`
}

// SnapshotType is the spec's SnapshotCreateParams.snapshot_type enum.
type SnapshotType string

const (
	SnapshotFull SnapshotType = "Full"
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotCreateParams is the spec's SnapshotCreateParams (PUT /snapshot/create, VM paused).
type SnapshotCreateParams struct {
	MemFilePath  string       `json:"mem_file_path"`
	SnapshotPath string       `json:"snapshot_path"`
	SnapshotType SnapshotType `json:"snapshot_type,omitempty"`
}

// MemoryBackendType is the spec's MemoryBackend.backend_type enum.
type MemoryBackendType string

const (
	MemoryBackendFile MemoryBackendType = "File"
	MemoryBackendUffd MemoryBackendType = "Uffd"
)

// MemoryBackend is the spec's MemoryBackend.
type MemoryBackend struct {
	BackendType MemoryBackendType `json:"backend_type"`
	BackendPath string            `json:"backend_path"`
}

// VsockOverride is the spec's VsockOverride: the restored VM's vsock uds path, so clones of one
// snapshot do not fight over the original's socket.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoadParams is the spec's SnapshotLoadParams (PUT /snapshot/load, fresh process only).
// The deprecated mem_file_path is not offered: MemBackend is required.
type SnapshotLoadParams struct {
	SnapshotPath    string         `json:"snapshot_path"`
	MemBackend      MemoryBackend  `json:"mem_backend"`
	TrackDirtyPages bool           `json:"track_dirty_pages,omitempty"`
	ResumeVM        bool           `json:"resume_vm,omitempty"`
	VsockOverride   *VsockOverride `json:"vsock_override,omitempty"`
	ClockRealtime   bool           `json:"clock_realtime,omitempty"`
}

// InstanceInfo is the spec's InstanceInfo (GET /).
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// Instance states reported by InstanceInfo.State.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// FirecrackerVersion is the spec's FirecrackerVersion (GET /version).
type FirecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}
