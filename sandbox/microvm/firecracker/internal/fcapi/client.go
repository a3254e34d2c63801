package fcapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// maxResponseBytes bounds what the client reads of any API answer: Firecracker's answers are a few
// hundred bytes, and a hostile or broken peer must not make the host buffer without end.
const maxResponseBytes = 64 << 10

// APIError is a non-2xx answer of the Firecracker API. FaultMessage is the API's own explanation
// (the Error definition's fault_message), or the raw body when it was not that JSON.
type APIError struct {
	Method       string
	Path         string
	StatusCode   int
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("firecracker %s %s: %d: %s", e.Method, e.Path, e.StatusCode, msg)
}

// Client talks to one Firecracker process's API socket. It is safe for concurrent use, though
// Firecracker itself serves one request at a time.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the API socket at path. Each request is bounded by ctx; the
// client adds no timeout of its own.
func NewClient(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		// Firecracker answers on one connection at a time; keeping one idle is enough and avoids
		// a reconnect per request during configuration.
		MaxIdleConns:          1,
		IdleConnTimeout:       5 * time.Second,
		ResponseHeaderTimeout: 0,
		DisableCompression:    true,
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: tr}}
}

// SocketPath returns the API socket's path.
func (c *Client) SocketPath() string { return c.socket }

// CloseIdleConnections releases the kept connection (call it before the process goes away).
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// validDriveID is what the client accepts as a drive id. Firecracker accepts alphanumerics and
// '_'; refusing the rest also keeps the id from changing the request path.
func validDriveID(id string) bool { return ValidID(id, '_') }

// ValidID reports whether id is 1–64 ASCII letters, digits and extra. Not a regexp: a compiled
// {1,64} repetition costs every process that links this package ~0.2 ms of init, the container
// init that libcontainer re-executes included.
func ValidID(id string, extra byte) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == extra) {
			return false
		}
	}
	return true
}

// PutBootSource sets the kernel, initrd and command line (pre-boot only).
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	if b.KernelImagePath == "" {
		return errors.New("firecracker: boot source without kernel_image_path")
	}
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutMachineConfig sets vCPUs and memory (pre-boot only).
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	if m.VcpuCount < 1 || m.VcpuCount > 32 {
		return fmt.Errorf("firecracker: vcpu_count %d is outside 1..32", m.VcpuCount)
	}
	if m.MemSizeMib < 1 {
		return fmt.Errorf("firecracker: mem_size_mib %d is not positive", m.MemSizeMib)
	}
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutDrive creates or updates the drive d.DriveID (pre-boot only).
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	if !validDriveID(d.DriveID) {
		return fmt.Errorf("firecracker: invalid drive id %q (want 1-64 of [A-Za-z0-9_])", d.DriveID)
	}
	if d.PathOnHost == "" {
		return fmt.Errorf("firecracker: drive %q without path_on_host", d.DriveID)
	}
	return c.do(ctx, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

// PutNetworkInterface creates the network interface n.IfaceID (pre-boot only).
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	if !validDriveID(n.IfaceID) {
		return fmt.Errorf("firecracker: invalid interface id %q (want 1-64 of [A-Za-z0-9_])", n.IfaceID)
	}
	if n.HostDevName == "" || len(n.HostDevName) > 15 || strings.ContainsAny(n.HostDevName, "/ \x00") {
		return fmt.Errorf("firecracker: invalid tap name %q", n.HostDevName)
	}
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+n.IfaceID, n, nil)
}

// PutVsock creates the vsock device (pre-boot only). The guest CID must be at least 3.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	if v.GuestCID < 3 {
		return fmt.Errorf("firecracker: guest_cid %d is below 3", v.GuestCID)
	}
	if v.UDSPath == "" {
		return errors.New("firecracker: vsock without uds_path")
	}
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutEntropy creates the virtio-rng device (pre-boot only).
func (c *Client) PutEntropy(ctx context.Context, e EntropyDevice) error {
	return c.do(ctx, http.MethodPut, "/entropy", e, nil)
}

// PutLogger points Firecracker's log at a file or FIFO.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics points Firecracker's metrics at a file or FIFO.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	if m.MetricsPath == "" {
		return errors.New("firecracker: metrics without metrics_path")
	}
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}

// Action runs a synchronous action (InstanceStart, SendCtrlAltDel, FlushMetrics).
func (c *Client) Action(ctx context.Context, a ActionType) error {
	switch a {
	case ActionInstanceStart, ActionSendCtrlAltDel, ActionFlushMetrics:
	default:
		return fmt.Errorf("firecracker: unknown action %q", a)
	}
	return c.do(ctx, http.MethodPut, "/actions", instanceActionInfo{ActionType: a}, nil)
}

// SetVMState pauses or resumes the microVM.
func (c *Client) SetVMState(ctx context.Context, s VMState) error {
	if s != VMPaused && s != VMResumed {
		return fmt.Errorf("firecracker: unknown vm state %q", s)
	}
	return c.do(ctx, http.MethodPatch, "/vm", vmBody{State: s}, nil)
}

// CreateSnapshot writes the paused microVM's state and memory to the given host paths.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	if p.MemFilePath == "" || p.SnapshotPath == "" {
		return errors.New("firecracker: snapshot create needs mem_file_path and snapshot_path")
	}
	return c.do(ctx, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot restores a snapshot into this (fresh, unconfigured) process.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	if p.SnapshotPath == "" || p.MemBackend.BackendPath == "" {
		return errors.New("firecracker: snapshot load needs snapshot_path and mem_backend.backend_path")
	}
	if p.MemBackend.BackendType != MemoryBackendFile && p.MemBackend.BackendType != MemoryBackendUffd {
		return fmt.Errorf("firecracker: unknown memory backend type %q", p.MemBackend.BackendType)
	}
	return c.do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// DescribeInstance returns the instance's id, state and version (GET /).
func (c *Client) DescribeInstance(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// Version returns the Firecracker version (GET /version).
func (c *Client) Version(ctx context.Context) (string, error) {
	var v FirecrackerVersion
	err := c.do(ctx, http.MethodGet, "/version", nil, &v)
	return v.FirecrackerVersion, err
}

// do sends one request. A 2xx answer decodes into out when out is non-nil; anything else is an
// *APIError carrying the fault message.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	// The host part is ignored: the transport always dials the unix socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if len(raw) > maxResponseBytes {
		return fmt.Errorf("firecracker %s %s: answer over %d bytes", method, path, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Method: method, Path: path, StatusCode: resp.StatusCode, FaultMessage: faultMessage(raw)}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// faultMessage extracts fault_message from an Error body, falling back to the trimmed raw body.
func faultMessage(raw []byte) string {
	var e struct {
		FaultMessage *string `json:"fault_message"`
	}
	if json.Unmarshal(raw, &e) == nil && e.FaultMessage != nil {
		return *e.FaultMessage
	}
	s := strings.TrimSpace(string(raw))
	const max = 512
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}
