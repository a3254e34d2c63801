// Command soak is the reliability soak benchmark: it starts a real `axoiso serve` over a tools
// root of its own (Wasm tools, pooled and cold container tools, a pooled microVM tool when the
// guest image exists, and tools that fail on purpose), sends a fixed number of mixed calls over
// HTTP from a few concurrent clients, and reports per-tool statuses and latencies, the server's
// RSS, open fds and goroutines at the start, middle and end, and what is left on the host after
// a SIGTERM.
//
//	go run ./examples/build && go build -tags seccomp -o bin/ ./cmd/axoiso
//	go run ./internal/soak [-n 2000] [-c 8] [-axoiso bin/axoiso] [-json]
//
// It exits non-zero when a call got a status its tool should not give, when the server's
// resources grew past a bound between the middle and the end, or when something was left
// behind. It needs root for the container tools (without root they are left out).
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// soakTool is one tool of the mix: its weight in the mix, the input it is called with and the
// HTTP status every one of its calls must get.
type soakTool struct {
	name   string
	label  string // the name in the report, when one tool is called in two ways
	weight int
	input  string
	want   int
}

type sample struct {
	Phase      string `json:"phase"`
	RSSBytes   int64  `json:"rss_bytes"`
	FDs        int    `json:"fds"`
	Goroutines int    `json:"goroutines"`
}

type toolReport struct {
	Tool     string         `json:"tool"`
	Calls    int            `json:"calls"`
	Statuses map[string]int `json:"statuses"`
	Want     int            `json:"want_status"`
	P50MS    float64        `json:"p50_ms"`
	P99MS    float64        `json:"p99_ms"`
}

type report struct {
	Calls      int          `json:"calls"`
	Unexpected int          `json:"unexpected"`
	Tools      []toolReport `json:"tools"`
	Samples    []sample     `json:"samples"`
	Leftovers  []string     `json:"leftovers"`
	Seconds    float64      `json:"seconds"`
}

func main() {
	n := flag.Int("n", 2000, "calls to send")
	conc := flag.Int("c", 8, "concurrent clients")
	bin := flag.String("axoiso", "bin/axoiso", "the axoiso binary")
	examples := flag.String("examples", "examples/tools", "the example tools (built: go run ./examples/build)")
	asJSON := flag.Bool("json", false, "print the report as JSON")
	flag.Parse()
	if err := run(*n, *conc, *bin, *examples, *asJSON); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

func run(n, conc int, bin, examples string, asJSON bool) error {
	work, err := os.MkdirTemp("", "axoiso-soak-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	// Tool folders are read by unprivileged ids (container roots, the microVM tool's uid).
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	tools, cfg, err := setUp(work, examples)
	if err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	var serverLog bytes.Buffer
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:"+strconv.Itoa(port), "--tools", filepath.Join(work, "tools"),
		"--config", cfg, "--log-level", "warn", "--grace", "5s", "--max-concurrent", "16")
	cmd.Stdout, cmd.Stderr = &serverLog, &serverLog
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()
	if err := waitHealthy(base, exited); err != nil {
		return fmt.Errorf("%w\nserver log:\n%s", err, serverLog.String())
	}
	// One call of each tool first: compiled modules, filled pools, booted VMs are the steady state.
	client := &http.Client{Timeout: 60 * time.Second}
	for _, t := range tools {
		call(client, base, t)
	}
	time.Sleep(3 * time.Second) // pools refill after their first calls
	rep := report{Calls: n}
	rep.Samples = append(rep.Samples, measure("start", cmd.Process.Pid, client, base))

	type result struct {
		tool   int
		status int
		dur    time.Duration
	}
	results := make([]result, n)
	mix := weighted(tools)
	var next int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	started := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 42))
			for {
				mu.Lock()
				i := next
				next++
				if i == int64(n/2) {
					rep.Samples = append(rep.Samples, measure("middle", cmd.Process.Pid, client, base))
				}
				mu.Unlock()
				if i >= int64(n) {
					return
				}
				ti := mix[r.IntN(len(mix))]
				t0 := time.Now()
				status := call(client, base, tools[ti])
				results[i] = result{tool: ti, status: status, dur: time.Since(t0)}
			}
		}(uint64(w))
	}
	wg.Wait()
	rep.Seconds = time.Since(started).Seconds()
	time.Sleep(2 * time.Second) // let background teardown and refills settle before the last sample
	rep.Samples = append(rep.Samples, measure("end", cmd.Process.Pid, client, base))

	perTool := map[int][]result{}
	for _, r := range results {
		perTool[r.tool] = append(perTool[r.tool], r)
	}
	for ti, t := range tools {
		rs := perTool[ti]
		label := t.name
		if t.label != "" {
			label = t.label
		}
		tr := toolReport{Tool: label, Calls: len(rs), Statuses: map[string]int{}, Want: t.want}
		var durs []float64
		for _, r := range rs {
			tr.Statuses[strconv.Itoa(r.status)]++
			if r.status != t.want {
				rep.Unexpected++
			}
			durs = append(durs, float64(r.dur.Microseconds())/1000)
		}
		tr.P50MS, tr.P99MS = quantile(durs, 0.5), quantile(durs, 0.99)
		rep.Tools = append(rep.Tools, tr)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		return errors.New("the server did not exit within 30 s of SIGTERM")
	}
	rep.Leftovers = leftovers(work)

	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(rep)
	} else {
		printReport(rep)
	}
	var problems []string
	if rep.Unexpected > 0 {
		problems = append(problems, fmt.Sprintf("%d calls got an unexpected status", rep.Unexpected))
	}
	if p := growth(rep.Samples); p != "" {
		problems = append(problems, p)
	}
	if len(rep.Leftovers) > 0 {
		problems = append(problems, "left behind after shutdown: "+strings.Join(rep.Leftovers, ", "))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s\nserver log tail:\n%s", strings.Join(problems, "; "), tail(serverLog.String(), 4000))
	}
	return nil
}

// setUp writes the tools root and the config under work.
func setUp(work, examples string) ([]soakTool, string, error) {
	root := filepath.Join(work, "tools")
	var tools []soakTool
	for _, name := range []string{"hello-wasm", "wordcount"} {
		if err := copyDir(filepath.Join(examples, name), filepath.Join(root, name)); err != nil {
			return nil, "", fmt.Errorf("example tool %s (build it: go run ./examples/build): %w", name, err)
		}
	}
	tools = append(tools,
		soakTool{name: "hello-wasm", weight: 30, input: `{"name":"soak"}`, want: 200},
		soakTool{name: "wordcount", weight: 20, input: `{"text":"to be or not to be"}`, want: 200},
		soakTool{name: "hello-wasm", label: "hello-wasm/bad", weight: 5, input: `{"nom":"x"}`, want: 400}, // schema refuses
		soakTool{name: "no-such-tool", weight: 2, input: `{}`, want: 404},
	)
	// A module that does not compile: a broken tool folder, not a fault of the service.
	if err := writeTool(root, "broken-wasm", `{"runtime":"WasmCompiled","entrypoint":"tool.wasm"}`, map[string]string{"tool.wasm": "\x00asm\x01\x00\x00\x00\x01\xff"}); err != nil {
		return nil, "", err
	}
	tools = append(tools, soakTool{name: "broken-wasm", weight: 3, input: `{}`, want: statusInvalidTool})

	cfg := map[string]any{
		"oci":      map[string]any{"state_root": filepath.Join(work, "state"), "pool_size": 2},
		"vm":       map[string]any{"run_dir": filepath.Join(work, "vm")},
		"strict":   false,
		"data_dir": dataDir(),
	}
	busybox := "/bin/busybox"
	if os.Geteuid() == 0 && isStatic(busybox) {
		script := map[string]string{
			"oci-echo":  `cat /axocoatl/input.json > /axocoatl/output.json`,
			"oci-fail":  `echo failing on purpose >&2; exit 3`,
			"oci-spin":  `while :; do :; done`,
			"oci-noout": `exit 0`,
		}
		for name, sh := range script {
			if err := writeBundle(root, name, busybox, sh); err != nil {
				return nil, "", err
			}
		}
		if err := writeTool(root, "oci-spin", `{"runtime":"ContainerImage","timeout_ms":300}`, nil); err != nil {
			return nil, "", err
		}
		tools = append(tools,
			soakTool{name: "oci-echo", weight: 25, input: `{"x":1}`, want: 200},
			soakTool{name: "oci-fail", weight: 4, input: `{}`, want: 502},
			soakTool{name: "oci-noout", weight: 3, input: `{}`, want: 502},
			soakTool{name: "oci-spin", weight: 1, input: `{}`, want: 504},
		)
	}
	if _, err := os.Stat(filepath.Join(dataDir(), "vm")); err == nil && os.Geteuid() == 0 {
		cfg["vm"].(map[string]any)["pool_size"] = 1
		if err := writeTool(root, "vm-sh", `{"runtime":"Shell","entrypoint":"run.sh","timeout_ms":20000}`,
			map[string]string{"run.sh": "#!/bin/sh\ncat /axocoatl/input.json > /axocoatl/output.json\n"}); err != nil {
			return nil, "", err
		}
		tools = append(tools, soakTool{name: "vm-sh", weight: 3, input: `{"vm":true}`, want: 200})
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(work, "axoiso.json")
	return tools, cfgPath, os.WriteFile(cfgPath, b, 0o600)
}

// statusInvalidTool is what a broken tool folder answers over HTTP.
const statusInvalidTool = 424

func dataDir() string {
	if d := os.Getenv("AXOISO_DATA_DIR"); d != "" {
		return d
	}
	return "/var/lib/axocoatl"
}

func writeTool(root, name, manifest string, files map[string]string) error {
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "tool.json"), []byte(manifest), 0o644); err != nil {
		return err
	}
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// writeBundle writes an OCI bundle whose rootfs is a static busybox running sh -c script.
func writeBundle(root, name, busybox, script string) error {
	dir := filepath.Join(root, name)
	for _, d := range []string{"bin", "tmp", "proc", "dev", "axocoatl"} {
		if err := os.MkdirAll(filepath.Join(dir, "rootfs", d), 0o755); err != nil {
			return err
		}
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "rootfs", "bin", "busybox"), b, 0o755); err != nil {
		return err
	}
	if err := os.Symlink("busybox", filepath.Join(dir, "rootfs", "bin", "sh")); err != nil {
		return err
	}
	cfg := map[string]any{
		"ociVersion": "1.0.2",
		"process":    map[string]any{"args": []string{"/bin/sh", "-c", script}, "cwd": "/", "env": []string{"PATH=/bin"}, "user": map[string]int{"uid": 0, "gid": 0}},
		"root":       map[string]any{"path": "rootfs", "readonly": true},
	}
	cb, _ := json.Marshal(cfg)
	return os.WriteFile(filepath.Join(dir, "config.json"), cb, 0o644)
}

func isStatic(path string) bool {
	out, err := exec.Command("file", "-L", path).Output()
	if err != nil {
		// No file(1): trust Debian's busybox-static, whose busybox is static.
		_, serr := os.Stat(path)
		return serr == nil
	}
	return bytes.Contains(out, []byte("statically linked")) || bytes.Contains(out, []byte("static-pie"))
}

func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, 0o644)
	})
}

func weighted(tools []soakTool) []int {
	var mix []int
	for i, t := range tools {
		for j := 0; j < t.weight; j++ {
			mix = append(mix, i)
		}
	}
	return mix
}

func call(client *http.Client, base string, t soakTool) int {
	resp, err := client.Post(base+"/v1/tools/"+t.name+"/execute", "application/json", strings.NewReader(t.input))
	if err != nil {
		return 0 // no answer at all: always unexpected
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitHealthy(base string, exited <-chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("the server exited at start: %v", err)
		default:
		}
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("the server did not answer /healthz within 60 s")
}

// measure reads the server's RSS and fd count from /proc and its goroutines from /metrics.
func measure(phase string, pid int, client *http.Client, base string) sample {
	s := sample{Phase: phase}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				s.RSSBytes = kb << 10
			}
		}
	}
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		s.FDs = len(ents)
	}
	if resp, err := client.Get(base + "/metrics"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
				g, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				s.Goroutines = int(g)
			}
		}
	}
	return s
}

// growth reports resources that grew from the middle of the run to its end by more than noise:
// a leak grows with the calls, and the second half sent as many as the first.
func growth(samples []sample) string {
	var mid, end sample
	for _, s := range samples {
		switch s.Phase {
		case "middle":
			mid = s
		case "end":
			end = s
		}
	}
	var out []string
	if end.RSSBytes > mid.RSSBytes+mid.RSSBytes/4+(16<<20) {
		out = append(out, fmt.Sprintf("RSS grew %d → %d MiB", mid.RSSBytes>>20, end.RSSBytes>>20))
	}
	if end.FDs > mid.FDs+16 {
		out = append(out, fmt.Sprintf("fds grew %d → %d", mid.FDs, end.FDs))
	}
	if end.Goroutines > mid.Goroutines+32 {
		out = append(out, fmt.Sprintf("goroutines grew %d → %d", mid.Goroutines, end.Goroutines))
	}
	return strings.Join(out, ", ")
}

// leftovers lists what the server left on the host: entries in its state and VM run dirs,
// container cgroups and processes, VMMs.
func leftovers(work string) []string {
	var out []string
	for _, d := range []string{filepath.Join(work, "state"), filepath.Join(work, "vm")} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".") || strings.HasSuffix(e.Name(), ".lock") {
				continue
			}
			out = append(out, filepath.Join(d, e.Name()))
		}
	}
	ctrls, _ := os.ReadDir("/sys/fs/cgroup")
	for _, c := range ctrls {
		base := filepath.Join("/sys/fs/cgroup", c.Name())
		filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.Count(strings.TrimPrefix(p, base), "/") > 3 {
				return filepath.SkipDir
			}
			if mentionsSoakTool(d.Name()) {
				out = append(out, p)
				return filepath.SkipDir
			}
			return nil
		})
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if bytes.Contains(cmdline, []byte(work)) {
			out = append(out, "process "+p.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return out
}

// mentionsSoakTool: container ids are axocoatl-<tool>-<uuid>; the soak's tools are named oci-*.
func mentionsSoakTool(name string) bool { return strings.HasPrefix(name, "axocoatl-oci-") }

func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	sort.Float64s(xs)
	return xs[int(q*float64(len(xs)-1))]
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func printReport(r report) {
	fmt.Printf("%d calls in %.1f s, %d unexpected statuses\n", r.Calls, r.Seconds, r.Unexpected)
	fmt.Printf("%-16s %6s %8s %8s  %s\n", "tool", "calls", "p50 ms", "p99 ms", "statuses (want)")
	for _, t := range r.Tools {
		var st []string
		for k, v := range t.Statuses {
			st = append(st, fmt.Sprintf("%s×%d", k, v))
		}
		sort.Strings(st)
		fmt.Printf("%-16s %6d %8.1f %8.1f  %s (%d)\n", t.Tool, t.Calls, t.P50MS, t.P99MS, strings.Join(st, " "), t.Want)
	}
	fmt.Printf("%-8s %10s %6s %11s\n", "phase", "RSS MiB", "fds", "goroutines")
	for _, s := range r.Samples {
		fmt.Printf("%-8s %10.1f %6d %11d\n", s.Phase, float64(s.RSSBytes)/(1<<20), s.FDs, s.Goroutines)
	}
	if len(r.Leftovers) == 0 {
		fmt.Println("left after shutdown: nothing")
	} else {
		fmt.Println("left after shutdown:", strings.Join(r.Leftovers, ", "))
	}
}
