package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation/sandbox/microvm/firecracker/internal/fcapi"
)

// shortTempDir returns a temp dir short enough for unix socket paths (t.TempDir can exceed 108
// bytes with long test names).
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startFake serves h on a fresh unix socket and returns its path.
func startFake(t *testing.T, h http.Handler) string { return startFakeB(t, h) }

func startFakeB(t testing.TB, h http.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return sock
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSpecCheckerRejects(t *testing.T) {
	spec := mustSpec(t)
	cases := []struct {
		name, method, path, body, want string
	}{
		{"unknown path", "PUT", "/nope", `{}`, "no path"},
		{"wrong method", "DELETE", "/vm", ``, "not allowed"},
		{"missing body", "PUT", "/boot-source", ``, "body required"},
		{"body on GET", "GET", "/", `{}`, "takes no body"},
		{"missing required", "PUT", "/boot-source", `{"boot_args":"x"}`, `"kernel_image_path" missing`},
		{"unknown field", "PUT", "/boot-source", `{"kernel_image_path":"/k","kernel":"x"}`, `unknown field "kernel"`},
		{"wrong type", "PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":128}`, "want an integer"},
		{"below minimum", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, "below the minimum"},
		{"above maximum", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, "above the maximum"},
		{"bad enum", "PUT", "/actions", `{"action_type":"Reboot"}`, "not one of"},
		{"bad nested enum", "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"Disk","backend_path":"/m"}}`, "not one of"},
		{"vsock cid minimum", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`, "below the minimum"},
		{"not json", "PATCH", "/vm", `{state:`, "not JSON"},
		{"float integer", "PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":128}`, "want an integer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
			r.Header.Set("Content-Type", "application/json")
			_, _, _, err := spec.checkRequest(r, []byte(c.body))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("checkRequest(%s %s %s) = %v, want an error containing %q", c.method, c.path, c.body, err, c.want)
			}
		})
	}
	// And it accepts a valid one, so the rejections above are not a checker that refuses all.
	r := httptest.NewRequest("PUT", "/drives/root", nil)
	r.Header.Set("Content-Type", "application/json")
	body := `{"drive_id":"root","is_root_device":false,"is_read_only":true,"path_on_host":"/r.ext4"}`
	if _, params, _, err := spec.checkRequest(r, []byte(body)); err != nil || params["drive_id"] != "root" {
		t.Fatalf("valid drive request: params %v, err %v", params, err)
	}
}

// TestClientLifecycleAgainstSpec drives configure → start → pause → snapshot create on one fake
// server and snapshot load on a fresh one; every request must satisfy the spec.
func TestClientLifecycleAgainstSpec(t *testing.T) {
	spec := mustSpec(t)
	ctx := testCtx(t)
	dir := shortTempDir(t)

	kernel, initrd, rootfs := guestFiles(t)
	fc := newFakeFirecracker(spec, "vm-1")
	c := fcapi.NewClient(startFake(t, fc))
	defer c.CloseIdleConnections()

	steps := []struct {
		name string
		do   func() error
	}{
		{"logger", func() error { return c.PutLogger(ctx, fcapi.Logger{LogPath: filepath.Join(dir, "log"), Level: "Info"}) }},
		{"metrics", func() error { return c.PutMetrics(ctx, fcapi.Metrics{MetricsPath: filepath.Join(dir, "metrics")}) }},
		{"machine", func() error { return c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 2, MemSizeMib: 256}) }},
		{"boot", func() error {
			return c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: kernel, InitrdPath: initrd, BootArgs: Cmdline("axocoatl.chan=vsock:1024")})
		}},
		{"drive", func() error {
			return c.PutDrive(ctx, fcapi.Drive{DriveID: "root", PathOnHost: rootfs, IsReadOnly: true, CacheType: fcapi.CacheUnsafe, IOEngine: "Sync"})
		}},
		{"vsock", func() error { return c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: filepath.Join(dir, "v.sock")}) }},
		{"entropy", func() error {
			return c.PutEntropy(ctx, fcapi.EntropyDevice{RateLimiter: &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 1 << 20, RefillTime: 100}}})
		}},
		{"start", func() error { return c.Action(ctx, fcapi.ActionInstanceStart) }},
		{"pause", func() error { return c.SetVMState(ctx, fcapi.VMPaused) }},
		{"snapshot", func() error {
			return c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotPath: filepath.Join(dir, "state"), MemFilePath: filepath.Join(dir, "mem"), SnapshotType: fcapi.SnapshotFull})
		}},
		{"resume", func() error { return c.SetVMState(ctx, fcapi.VMResumed) }},
		{"ctrl-alt-del", func() error { return c.Action(ctx, fcapi.ActionSendCtrlAltDel) }},
		{"flush metrics", func() error { return c.Action(ctx, fcapi.ActionFlushMetrics) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	info, err := c.DescribeInstance(ctx)
	if err != nil || info.State != fcapi.StateRunning || info.ID != "vm-1" {
		t.Fatalf("DescribeInstance = %+v, %v; want running vm-1", info, err)
	}
	if v, err := c.Version(ctx); err != nil || v != "1.17.0-dev" {
		t.Fatalf("Version = %q, %v", v, err)
	}
	if v := fc.Violations(); len(v) > 0 {
		t.Fatalf("spec violations: %v", v)
	}
	var got []string
	for _, r := range fc.Requests() {
		got = append(got, r.Method+" "+r.Path)
	}
	want := []string{"PUT /logger", "PUT /metrics", "PUT /machine-config", "PUT /boot-source", "PUT /drives/root",
		"PUT /vsock", "PUT /entropy", "PUT /actions", "PATCH /vm", "PUT /snapshot/create", "PATCH /vm",
		"PUT /actions", "PUT /actions", "GET /", "GET /version"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("requests\n got %v\nwant %v", got, want)
	}
	reqs := fc.Requests()
	if b := reqs[2].Body; b["vcpu_count"] != json.Number("2") || b["mem_size_mib"] != json.Number("256") {
		t.Fatalf("machine-config body %v", b)
	}
	if b := reqs[7].Body; b["action_type"] != "InstanceStart" {
		t.Fatalf("actions body %v", b)
	}
	if b := reqs[9].Body; b["snapshot_type"] != "Full" {
		t.Fatalf("snapshot body %v", b)
	}

	// Pre-boot resources are refused once started: the fault message must come through typed.
	err = c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 128})
	var apiErr *fcapi.APIError
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.FaultMessage, "after starting") {
		t.Fatalf("machine-config after start: %v", err)
	}

	// Load on a fresh process (the only state Firecracker accepts it in).
	fresh := newFakeFirecracker(spec, "vm-2")
	c2 := fcapi.NewClient(startFake(t, fresh))
	defer c2.CloseIdleConnections()
	newVsock := filepath.Join(dir, "v2.sock")
	if err := c2.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{
		SnapshotPath:  filepath.Join(dir, "state"),
		MemBackend:    fcapi.MemoryBackend{BackendType: fcapi.MemoryBackendFile, BackendPath: filepath.Join(dir, "mem")},
		VsockOverride: &fcapi.VsockOverride{UDSPath: newVsock},
		ResumeVM:      true,
	}); err != nil {
		t.Fatalf("load: %v", err)
	}
	if info, err := c2.DescribeInstance(ctx); err != nil || info.State != fcapi.StateRunning {
		t.Fatalf("after load: %+v, %v", info, err)
	}
	if fresh.vsockPath != newVsock {
		t.Fatalf("vsock after load %q, want the override %q", fresh.vsockPath, newVsock)
	}
	if v := fresh.Violations(); len(v) > 0 {
		t.Fatalf("spec violations on load: %v", v)
	}

	// Load on a configured process is refused, as Firecracker does.
	used := newFakeFirecracker(spec, "vm-3")
	c3 := fcapi.NewClient(startFake(t, used))
	defer c3.CloseIdleConnections()
	if err := c3.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 1, MemSizeMib: 128}); err != nil {
		t.Fatal(err)
	}
	err = c3.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: filepath.Join(dir, "state"),
		MemBackend: fcapi.MemoryBackend{BackendType: fcapi.MemoryBackendFile, BackendPath: filepath.Join(dir, "mem")}})
	if !errors.As(err, &apiErr) || !strings.Contains(apiErr.FaultMessage, "not allowed") {
		t.Fatalf("load on configured process: %v", err)
	}
}

// TestClientRefusesBadArguments: bad values never become requests (no path injection via drive ids).
func TestClientRefusesBadArguments(t *testing.T) {
	fc := newFakeFirecracker(mustSpec(t), "x")
	c := fcapi.NewClient(startFake(t, fc))
	defer c.CloseIdleConnections()
	ctx := testCtx(t)
	cases := []struct {
		name string
		do   func() error
	}{
		{"drive id traversal", func() error { return c.PutDrive(ctx, fcapi.Drive{DriveID: "../vm", PathOnHost: "/r"}) }},
		{"drive id slash", func() error { return c.PutDrive(ctx, fcapi.Drive{DriveID: "a/b", PathOnHost: "/r"}) }},
		{"drive id query", func() error { return c.PutDrive(ctx, fcapi.Drive{DriveID: "a?b=c", PathOnHost: "/r"}) }},
		{"drive id empty", func() error { return c.PutDrive(ctx, fcapi.Drive{PathOnHost: "/r"}) }},
		{"drive without path", func() error { return c.PutDrive(ctx, fcapi.Drive{DriveID: "root"}) }},
		{"zero vcpus", func() error { return c.PutMachineConfig(ctx, fcapi.MachineConfig{MemSizeMib: 128}) }},
		{"33 vcpus", func() error { return c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 33, MemSizeMib: 128}) }},
		{"no memory", func() error { return c.PutMachineConfig(ctx, fcapi.MachineConfig{VcpuCount: 1}) }},
		{"no kernel", func() error { return c.PutBootSource(ctx, fcapi.BootSource{BootArgs: "x"}) }},
		{"cid 2", func() error { return c.PutVsock(ctx, fcapi.Vsock{GuestCID: 2, UDSPath: "/v"}) }},
		{"vsock no path", func() error { return c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3}) }},
		{"unknown action", func() error { return c.Action(ctx, "Reboot") }},
		{"unknown state", func() error { return c.SetVMState(ctx, "Stopped") }},
		{"snapshot no paths", func() error { return c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotPath: "/s"}) }},
		{"load no mem", func() error { return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: "/s"}) }},
		{"load bad backend", func() error {
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: "/s", MemBackend: fcapi.MemoryBackend{BackendType: "Disk", BackendPath: "/m"}})
		}},
		{"metrics no path", func() error { return c.PutMetrics(ctx, fcapi.Metrics{}) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if r := fc.Requests(); len(r) != 0 {
		t.Fatalf("refused arguments still reached the API: %v", r)
	}
}

// TestClientErrorResponses: whatever the API answers on failure, the client returns an *APIError
// with status and the best message available, and never panics or reads without bound.
func TestClientErrorResponses(t *testing.T) {
	cases := []struct {
		name    string
		status  int
		body    string
		wantMsg string
	}{
		{"fault json", 400, `{"fault_message":"Invalid kernel path"}`, "Invalid kernel path"},
		{"empty fault", 400, `{"fault_message":""}`, ""},
		{"internal", 500, `{"fault_message":"boom"}`, "boom"},
		{"plain text", 400, "not json at all", "not json at all"},
		{"empty body", 503, "", ""},
		{"json without fault", 400, `{"error":"x"}`, `{"error":"x"}`},
		{"fault wrong type", 400, `{"fault_message":42}`, `{"fault_message":42}`},
		{"huge body", 400, strings.Repeat("A", 100<<10), ""},
		{"truncated json", 400, `{"fault_message":"abc`, `{"fault_message":"abc`},
		{"unicode", 400, `{"fault_message":"défaut ✓"}`, "défaut ✓"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sock := startFake(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.body))
			}))
			c := fcapi.NewClient(sock)
			defer c.CloseIdleConnections()
			err := c.Action(testCtx(t), fcapi.ActionInstanceStart)
			var apiErr *fcapi.APIError
			if tc.name == "huge body" {
				if err == nil || !strings.Contains(err.Error(), "over") {
					t.Fatalf("huge answer: %v", err)
				}
				return
			}
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v (%T), want *fcapi.APIError", err, err)
			}
			if apiErr.StatusCode != tc.status || apiErr.FaultMessage != tc.wantMsg || apiErr.Path != "/actions" || apiErr.Method != "PUT" {
				t.Fatalf("APIError = %+v, want status %d message %q", apiErr, tc.status, tc.wantMsg)
			}
			if !strings.Contains(err.Error(), "/actions") {
				t.Fatalf("message %q does not name the path", err)
			}
		})
	}

	t.Run("bad success json", func(t *testing.T) {
		sock := startFake(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("{nope")) }))
		c := fcapi.NewClient(sock)
		defer c.CloseIdleConnections()
		if _, err := c.DescribeInstance(testCtx(t)); err == nil || !strings.Contains(err.Error(), "decode") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no socket", func(t *testing.T) {
		c := fcapi.NewClient(filepath.Join(shortTempDir(t), "missing.sock"))
		if _, err := c.DescribeInstance(testCtx(t)); err == nil {
			t.Fatal("no error without a server")
		}
	})
	t.Run("context cancel", func(t *testing.T) {
		block := make(chan struct{})
		sock := startFake(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-block }))
		defer close(block)
		c := fcapi.NewClient(sock)
		defer c.CloseIdleConnections()
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(20 * time.Millisecond); cancel() }()
		if err := c.Action(ctx, fcapi.ActionInstanceStart); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

func TestCmdline(t *testing.T) {
	cases := []struct{ extra, want, absent string }{
		{"axocoatl.chan=vsock:1024", "axocoatl.chan=vsock:1024", ""},
		{"console=ttyS1", "console=ttyS1", "console=ttyS0"},
		{"panic=5 panic=6", "panic=6", "panic=-1"},
		{"", "pci=off", ""},
	}
	for _, c := range cases {
		got := Cmdline(c.extra)
		if !strings.Contains(got, c.want) || (c.absent != "" && strings.Contains(got, c.absent)) {
			t.Errorf("Cmdline(%q) = %q; want %q without %q", c.extra, got, c.want, c.absent)
		}
		seen := map[string]bool{}
		for _, tok := range strings.Fields(got) {
			k, _, _ := strings.Cut(tok, "=")
			if seen[k] {
				t.Errorf("Cmdline(%q) = %q repeats %s", c.extra, got, k)
			}
			seen[k] = true
		}
	}
}
