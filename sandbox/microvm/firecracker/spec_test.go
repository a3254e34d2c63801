package firecracker

// A checker of requests against Firecracker's OpenAPI (swagger 2.0) spec, and a fake Firecracker
// API server built on it that answers like Firecracker (204 / 200 JSON / 400 fault JSON) and keeps
// Firecracker's state rules (pre-boot-only resources, snapshot only when paused, load only on a
// fresh process). Used in-process (httptest) and as a real subprocess (see TestMain).

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/axocoatl/isolation/sandbox/microvm/firecracker/internal/fcapi"

	"gopkg.in/yaml.v3"
)

type apiSpec struct {
	Paths       map[string]map[string]*specOp `yaml:"paths"`
	Definitions map[string]*specSchema        `yaml:"definitions"`
}

type specOp struct {
	OperationID string      `yaml:"operationId"`
	Parameters  []specParam `yaml:"parameters"`
}

type specParam struct {
	Name     string      `yaml:"name"`
	In       string      `yaml:"in"`
	Required bool        `yaml:"required"`
	Type     string      `yaml:"type"`
	Schema   *specSchema `yaml:"schema"`
}

type specSchema struct {
	Ref                  string                 `yaml:"$ref"`
	Type                 string                 `yaml:"type"`
	Required             []string               `yaml:"required"`
	Properties           map[string]*specSchema `yaml:"properties"`
	Enum                 []any                  `yaml:"enum"`
	Minimum              *float64               `yaml:"minimum"`
	Maximum              *float64               `yaml:"maximum"`
	Items                *specSchema            `yaml:"items"`
	AdditionalProperties *additional            `yaml:"additionalProperties"`
	ReadOnly             bool                   `yaml:"readOnly"`
}

// additional is additionalProperties: true (any value), false (none) or a schema.
type additional struct {
	Allowed bool
	Schema  *specSchema
}

func (a *additional) UnmarshalYAML(n *yaml.Node) error {
	var b bool
	if n.Decode(&b) == nil {
		a.Allowed = b
		return nil
	}
	a.Allowed = true
	return n.Decode(&a.Schema)
}

// specPath is the spec's location inside the package (a copy of /work/shared/specs, Apache-2.0).
const specPath = "testdata/firecracker.yaml"

func loadSpec(path string) (*apiSpec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s apiSpec
	if err := yaml.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if len(s.Paths) == 0 || len(s.Definitions) == 0 {
		return nil, fmt.Errorf("%s: no paths or definitions", path)
	}
	return &s, nil
}

func mustSpec(t testing.TB) *apiSpec {
	t.Helper()
	s, err := loadSpec(specPath)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// match finds the operation for method and path; it returns the path template and path params.
func (s *apiSpec) match(method, path string) (*specOp, string, map[string]string, error) {
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	var tmpls []string
	for tmpl := range s.Paths {
		tmpls = append(tmpls, tmpl)
	}
	sort.Strings(tmpls) // deterministic: literal templates sort before "{...}" ones
	for _, tmpl := range tmpls {
		tsegs := strings.Split(strings.TrimPrefix(tmpl, "/"), "/")
		if len(tsegs) != len(segs) {
			continue
		}
		params := map[string]string{}
		ok := true
		for i, ts := range tsegs {
			if strings.HasPrefix(ts, "{") && strings.HasSuffix(ts, "}") {
				if segs[i] == "" {
					ok = false
					break
				}
				params[ts[1:len(ts)-1]] = segs[i]
			} else if ts != segs[i] {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		op := s.Paths[tmpl][strings.ToLower(method)]
		if op == nil {
			return nil, tmpl, nil, fmt.Errorf("method %s not allowed on %s", method, tmpl)
		}
		return op, tmpl, params, nil
	}
	return nil, "", nil, fmt.Errorf("no path %s in the spec", path)
}

// checkRequest validates one request: method+path exist, path params, content type, body presence
// and the body against its schema. It returns the decoded body (nil when none).
func (s *apiSpec) checkRequest(r *http.Request, body []byte) (string, map[string]string, any, error) {
	op, tmpl, params, err := s.match(r.Method, r.URL.Path)
	if err != nil {
		return tmpl, nil, nil, err
	}
	var bodyParam *specParam
	for i := range op.Parameters {
		p := &op.Parameters[i]
		switch p.In {
		case "path":
			v, ok := params[p.Name]
			if p.Required && (!ok || v == "") {
				return tmpl, params, nil, fmt.Errorf("path parameter %s missing", p.Name)
			}
			if p.Type == "string" && strings.ContainsAny(v, "/?#%") {
				return tmpl, params, nil, fmt.Errorf("path parameter %s=%q is not a plain segment", p.Name, v)
			}
		case "body":
			bodyParam = p
		}
	}
	if len(r.URL.RawQuery) > 0 {
		return tmpl, params, nil, fmt.Errorf("unexpected query %q", r.URL.RawQuery)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if bodyParam != nil && bodyParam.Required {
			return tmpl, params, nil, fmt.Errorf("%s %s: body required", r.Method, tmpl)
		}
		return tmpl, params, nil, nil
	}
	if bodyParam == nil {
		return tmpl, params, nil, fmt.Errorf("%s %s takes no body", r.Method, tmpl)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		return tmpl, params, nil, fmt.Errorf("content type %q, want application/json", ct)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return tmpl, params, nil, fmt.Errorf("body is not JSON: %w", err)
	}
	if dec.More() {
		return tmpl, params, nil, fmt.Errorf("trailing data after the JSON body")
	}
	if err := s.validate(bodyParam.Schema, v, "body"); err != nil {
		return tmpl, params, v, err
	}
	return tmpl, params, v, nil
}

func (s *apiSpec) resolve(sc *specSchema) (*specSchema, error) {
	for depth := 0; sc != nil && sc.Ref != ""; depth++ {
		name, ok := strings.CutPrefix(sc.Ref, "#/definitions/")
		if !ok || depth > 16 {
			return nil, fmt.Errorf("unsupported $ref %q", sc.Ref)
		}
		d := s.Definitions[name]
		if d == nil {
			return nil, fmt.Errorf("$ref to missing definition %q", name)
		}
		sc = d
	}
	return sc, nil
}

// validate checks v against sc. Objects are strict: unknown fields are refused, as Firecracker's
// own deserializer does; readOnly fields may not be sent.
func (s *apiSpec) validate(sc *specSchema, v any, at string) error {
	sc, err := s.resolve(sc)
	if err != nil {
		return fmt.Errorf("%s: %w", at, err)
	}
	if sc == nil {
		return nil
	}
	switch sc.Type {
	case "object", "":
		if sc.Type == "" && sc.Properties == nil {
			break
		}
		obj, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %T", at, v)
		}
		for _, r := range sc.Required {
			if _, ok := obj[r]; !ok {
				return fmt.Errorf("%s: required field %q missing", at, r)
			}
		}
		for k, fv := range obj {
			ps, ok := sc.Properties[k]
			if !ok {
				if sc.AdditionalProperties != nil && sc.AdditionalProperties.Allowed {
					if err := s.validate(sc.AdditionalProperties.Schema, fv, at+"."+k); err != nil {
						return err
					}
					continue
				}
				return fmt.Errorf("%s: unknown field %q", at, k)
			}
			if ps.ReadOnly {
				return fmt.Errorf("%s: field %q is read-only", at, k)
			}
			if err := s.validate(ps, fv, at+"."+k); err != nil {
				return err
			}
		}
	case "string":
		if _, ok := v.(string); !ok {
			return fmt.Errorf("%s: want a string, got %T", at, v)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", at, v)
		}
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want an integer, got %T", at, v)
		}
		i, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil {
			return fmt.Errorf("%s: want an integer, got %s", at, n)
		}
		if sc.Minimum != nil && float64(i) < *sc.Minimum {
			return fmt.Errorf("%s: %d is below the minimum %v", at, i, *sc.Minimum)
		}
		if sc.Maximum != nil && float64(i) > *sc.Maximum {
			return fmt.Errorf("%s: %d is above the maximum %v", at, i, *sc.Maximum)
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", at, v)
		}
		for i, e := range arr {
			if err := s.validate(sc.Items, e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s: unsupported schema type %q", at, sc.Type)
	}
	if len(sc.Enum) > 0 {
		got := fmt.Sprint(v)
		for _, e := range sc.Enum {
			if fmt.Sprint(e) == got {
				return nil
			}
		}
		return fmt.Errorf("%s: %q is not one of %v", at, got, sc.Enum)
	}
	return nil
}

// recordedRequest is one request the fake server received.
type recordedRequest struct {
	Method, Path, Template string
	Body                   map[string]any
}

// fakeFirecracker answers the API like Firecracker and records every request. Violations of the
// spec are answered 400 and kept in violations.
type fakeFirecracker struct {
	spec *apiSpec
	id   string
	// onStart, when set, runs when the VM "runs" (InstanceStart, or a load with resume_vm) with
	// the vsock uds path (guest emulation in the subprocess fake).
	onStart func(vsockPath string)
	logTo   io.Writer

	mu         sync.Mutex // protects every field below
	requests   []recordedRequest
	violations []string
	configured map[string]bool // resources set before boot (besides logger/metrics)
	state      string          // fcapi.StateNotStarted, fcapi.StateRunning, fcapi.StatePaused
	vsockPath  string
	memMiB     int64
	// root emulates the jailer's chroot: API paths are resolved under it ("" = host paths).
	root string
	// taps are the host_dev_name of the network interfaces.
	taps []string
}

// hostPath resolves a path given to the API as the VMM would see it.
func (f *fakeFirecracker) hostPath(p string) string {
	if f.root == "" {
		return p
	}
	return filepath.Join(f.root, p)
}

func newFakeFirecracker(spec *apiSpec, id string) *fakeFirecracker {
	return &fakeFirecracker{spec: spec, id: id, configured: map[string]bool{}, state: fcapi.StateNotStarted, memMiB: 128}
}

func (f *fakeFirecracker) fault(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"fault_message": fmt.Sprintf(format, args...)})
}

func (f *fakeFirecracker) Requests() []recordedRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recordedRequest(nil), f.requests...)
}

func (f *fakeFirecracker) Violations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.violations...)
}

func (f *fakeFirecracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		f.fault(w, 400, "read body: %v", err)
		return
	}
	tmpl, params, v, err := f.spec.checkRequest(r, body)
	f.mu.Lock()
	defer f.mu.Unlock()
	obj, _ := v.(map[string]any)
	f.requests = append(f.requests, recordedRequest{Method: r.Method, Path: r.URL.Path, Template: tmpl, Body: obj})
	if f.logTo != nil {
		fmt.Fprintf(f.logTo, "FAKEFC REQ %s %s %s\n", r.Method, r.URL.Path, body)
	}
	if err != nil {
		f.violations = append(f.violations, fmt.Sprintf("%s %s: %v", r.Method, r.URL.Path, err))
		if f.logTo != nil {
			fmt.Fprintf(f.logTo, "FAKEFC SPEC VIOLATION %s %s: %v\n", r.Method, r.URL.Path, err)
		}
		f.fault(w, 400, "spec violation: %v", err)
		return
	}
	preBoot := func(resource string) bool {
		if f.state != fcapi.StateNotStarted {
			f.fault(w, 400, "The requested operation is not supported after starting the microVM.")
			return false
		}
		f.configured[resource] = true
		return true
	}
	switch r.Method + " " + tmpl {
	case "GET /":
		json.NewEncoder(w).Encode(fcapi.InstanceInfo{AppName: "Firecracker", ID: f.id, State: f.state, VMMVersion: "1.17.0-dev"})
		return
	case "GET /version":
		json.NewEncoder(w).Encode(fcapi.FirecrackerVersion{FirecrackerVersion: "1.17.0-dev"})
		return
	case "PUT /logger", "PUT /metrics":
	case "PUT /machine-config":
		if !preBoot("machine-config") {
			return
		}
		n, _ := obj["mem_size_mib"].(json.Number).Int64()
		f.memMiB = n
	case "PUT /boot-source", "PUT /drives/{drive_id}", "PUT /entropy":
		for _, k := range []string{"kernel_image_path", "initrd_path", "path_on_host"} {
			if p, ok := obj[k].(string); ok {
				if _, err := os.Stat(f.hostPath(p)); err != nil {
					f.fault(w, 400, "Invalid %s: %v", k, err)
					return
				}
			}
		}
		if tmpl == "/drives/{drive_id}" && obj["drive_id"] != params["drive_id"] {
			f.fault(w, 400, "The id from the path [%s] does not match the id from the body [%v]!", params["drive_id"], obj["drive_id"])
			return
		}
		if !preBoot(tmpl) {
			return
		}
	case "PUT /network-interfaces/{iface_id}":
		if obj["iface_id"] != params["iface_id"] {
			f.fault(w, 400, "The id from the path [%s] does not match the id from the body [%v]!", params["iface_id"], obj["iface_id"])
			return
		}
		// Firecracker opens the tap by name in its own network namespace (a jailed one may not
		// create it).
		tap, _ := obj["host_dev_name"].(string)
		if !tapExists(tap) {
			f.fault(w, 400, "Could not create the network device: Open tap device failed: %s not in this network namespace", tap)
			return
		}
		if !preBoot("network-interfaces") {
			return
		}
		f.taps = append(f.taps, tap)
	case "PUT /vsock":
		if !preBoot("vsock") {
			return
		}
		f.vsockPath = obj["uds_path"].(string)
	case "PUT /actions":
		switch obj["action_type"] {
		case "InstanceStart":
			if f.state != fcapi.StateNotStarted {
				f.fault(w, 400, "The requested operation is not supported after starting the microVM.")
				return
			}
			if !f.configured["/boot-source"] {
				f.fault(w, 400, "Cannot start microvm that was already started / without kernel configuration.")
				return
			}
			f.state = fcapi.StateRunning
			if f.onStart != nil && f.vsockPath != "" {
				f.onStart(f.hostPath(f.vsockPath))
			}
		case "SendCtrlAltDel":
			if f.state == fcapi.StateNotStarted {
				f.fault(w, 400, "The requested operation is not supported before starting the microVM.")
				return
			}
		}
	case "PATCH /vm":
		if f.state == fcapi.StateNotStarted {
			f.fault(w, 400, "The requested operation is not supported before starting the microVM.")
			return
		}
		if obj["state"] == "Paused" {
			f.state = fcapi.StatePaused
		} else {
			f.state = fcapi.StateRunning
		}
	case "PUT /snapshot/create":
		if f.state != fcapi.StatePaused {
			f.fault(w, 400, "Cannot save microVM state: the microVM is not paused.")
			return
		}
		state, _ := json.Marshal(map[string]any{"vsock": f.vsockPath, "mem": f.memMiB, "taps": f.taps})
		if err := os.WriteFile(f.hostPath(obj["snapshot_path"].(string)), state, 0o600); err != nil {
			f.fault(w, 400, "Cannot save the microVM state: %v", err)
			return
		}
		if err := os.WriteFile(f.hostPath(obj["mem_file_path"].(string)), bytes.Repeat([]byte{0}, 4096), 0o600); err != nil {
			f.fault(w, 400, "Cannot save the memory: %v", err)
			return
		}
	case "PUT /snapshot/load":
		if f.state != fcapi.StateNotStarted || len(f.configured) > 0 {
			f.fault(w, 400, "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
			return
		}
		mb, _ := obj["mem_backend"].(map[string]any)
		if _, hasFile := obj["mem_file_path"]; (mb == nil) == !hasFile {
			f.fault(w, 400, "Exactly one of mem_file_path and mem_backend must be given.")
			return
		}
		raw, err := os.ReadFile(f.hostPath(obj["snapshot_path"].(string)))
		if err != nil {
			f.fault(w, 400, "Load snapshot error: Cannot open the snapshot file: %v", err)
			return
		}
		var saved struct {
			Vsock string   `json:"vsock"`
			Taps  []string `json:"taps"`
		}
		if err := json.Unmarshal(raw, &saved); err != nil {
			f.fault(w, 400, "Load snapshot error: bad state file: %v", err)
			return
		}
		for _, tap := range saved.Taps {
			if !tapExists(tap) {
				f.fault(w, 400, "Load snapshot error: Open tap device failed: %s not in this network namespace", tap)
				return
			}
		}
		f.taps = saved.Taps
		if mb != nil {
			if _, err := os.Stat(f.hostPath(mb["backend_path"].(string))); err != nil {
				f.fault(w, 400, "Load snapshot error: Cannot open the memory file: %v", err)
				return
			}
		}
		f.vsockPath = saved.Vsock
		if vo, ok := obj["vsock_override"].(map[string]any); ok {
			f.vsockPath = vo["uds_path"].(string)
		}
		f.state = fcapi.StatePaused
		if obj["resume_vm"] == true {
			f.state = fcapi.StateRunning
			if f.onStart != nil && f.vsockPath != "" {
				f.onStart(f.hostPath(f.vsockPath))
			}
		}
	default:
		f.fault(w, 400, "the fake does not implement %s %s", r.Method, tmpl)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// serveFakeFirecracker runs the fake on a unix socket at path until the listener fails.
func serveFakeFirecracker(path string, f *fakeFirecracker) error {
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	return http.Serve(l, f)
}

// fakeGuestAgent emulates the guest side of the vsock device on uds: it answers "CONNECT <port>"
// with "OK <n>" for port, then echoes lines back prefixed by the VM id; other ports are refused by
// closing, as Firecracker does when nothing listens. refuseFirst connections are refused first
// (an agent still booting).
func fakeGuestAgent(uds string, port uint32, id string, refuseFirst int) error {
	os.Remove(uds)
	l, err := net.Listen("unix", uds)
	if err != nil {
		return err
	}
	go func() {
		n := 0
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n++
			refuse := n <= refuseFirst
			go func() {
				defer c.Close()
				line, err := readLine(c)
				if err != nil {
					return
				}
				p, ok := strings.CutPrefix(line, "CONNECT ")
				if !ok || refuse || p != strconv.FormatUint(uint64(port), 10) {
					return
				}
				io.WriteString(c, "OK 1073741824\n")
				buf := make([]byte, 256)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						fmt.Fprintf(c, "%s:%s", id, buf[:n])
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return nil
}

// runFakeFirecrackerMain is the subprocess fake: "firecracker --api-sock PATH --id ID".
func runFakeFirecrackerMain() {
	var sock, id string
	args := os.Args[1:]
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--api-sock":
			sock = args[i+1]
		case "--id":
			id = args[i+1]
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake firecracker: --api-sock required")
		os.Exit(2)
	}
	spec, err := loadSpec(os.Getenv("FAKEFC_SPEC"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		os.Exit(2)
	}
	f := newFakeFirecracker(spec, id)
	f.logTo = os.Stderr
	f.root = os.Getenv("FAKEFC_ROOT")
	sock = f.hostPath(sock)
	refuse, _ := strconv.Atoi(os.Getenv("FAKEFC_REFUSE_FIRST"))
	f.onStart = func(uds string) {
		if err := fakeGuestAgent(uds, DefaultAgentPort, id, refuse); err != nil {
			fmt.Fprintln(os.Stderr, "fake firecracker: vsock:", err)
		}
	}
	if err := serveFakeFirecracker(sock, f); err != nil {
		fmt.Fprintln(os.Stderr, "fake firecracker:", err)
		os.Exit(1)
	}
}

// runFakeJailerMain is the subprocess fake jailer: it builds <base>/<exec>/<id>/root as the jailer
// does and execs the exec file with the arguments after "--"; instead of chroot(2) it tells the
// fake Firecracker its root (FAKEFC_ROOT), which resolves every API path under it.
func runFakeJailerMain() {
	var id, execFile, base, netns string
	var rest []string
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		if args[i] == "--" {
			rest = args[i+1:]
			break
		}
		if i+1 >= len(args) {
			break
		}
		switch args[i] {
		case "--id":
			id = args[i+1]
		case "--exec-file":
			execFile = args[i+1]
		case "--chroot-base-dir":
			base = args[i+1]
		case "--netns":
			netns = args[i+1]
		}
		i++
	}
	if id == "" || execFile == "" || base == "" {
		fmt.Fprintln(os.Stderr, "fake jailer: --id, --exec-file and --chroot-base-dir are required")
		os.Exit(2)
	}
	root := filepath.Join(base, filepath.Base(execFile), id, "root")
	if err := os.MkdirAll(root, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "fake jailer:", err)
		os.Exit(1)
	}
	// What the jailer was asked (for the tests to check), beside the jails.
	_ = os.WriteFile(filepath.Join(base, "args-"+id), []byte(strings.Join(os.Args[1:], "\n")), 0o644)
	env := append(os.Environ(), "FAKEFC_ROOT="+root)
	// --netns: join the namespace on the thread that execs, as the jailer does before it execs
	// Firecracker (the new program runs in the execing thread's namespace).
	runtime.LockOSThread()
	if netns != "" {
		if err := joinNetns(netns); err != nil {
			fmt.Fprintln(os.Stderr, "fake jailer: --netns:", err)
			os.Exit(1)
		}
	}
	err := syscall.Exec(execFile, append([]string{execFile, "--id", id}, rest...), env)
	fmt.Fprintln(os.Stderr, "fake jailer: exec:", err)
	os.Exit(1)
}

func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "firecracker":
		runFakeFirecrackerMain()
		return
	case "jailer":
		runFakeJailerMain()
		return
	}
	os.Exit(m.Run())
}
