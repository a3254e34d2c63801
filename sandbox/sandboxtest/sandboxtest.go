// Package sandboxtest is the lifecycle conformance suite every tier runs, in the spirit of
// containerd's snapshotter suite: the contract of sandbox.Sandbox written once as tests.
//
// The contract:
//   - a call that reaches its deadline fails with isolation.ErrTimeout (and not context.Canceled);
//   - a call whose context is cancelled fails with context.Canceled (and not isolation.ErrTimeout):
//     a client that went away is not a slow tool;
//   - Close waits for the calls in flight to end; Run after Close fails (never panics); Close twice
//     is fine;
//   - after any of these, nothing the calls created remains (Subject.Leftovers);
//   - a tool's stdout and stderr come back apart (Outcome.Stdout, Outcome.Stderr).
//
// A tier's test file calls Run with a Factory that builds a fresh sandbox and two calls: one that
// answers and one that never ends on its own.
package sandboxtest

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/sandbox"
)

// Subject is one sandbox under test and the calls the suite makes of it.
type Subject struct {
	// Sandbox is a fresh sandbox; the suite closes it.
	Sandbox sandbox.Sandbox
	// Answer is a call of a tool that exits 0 and writes its input, unchanged, as its output.
	// The suite's inputs are objects with "mode":"echo" (for test tools whose input picks a
	// behaviour).
	Answer sandbox.Call
	// Hang is a call of a tool that never ends on its own (a busy loop or a long sleep).
	Hang sandbox.Call
	// Print is a call of a tool that writes PrintStdout on stdout, PrintStderr on stderr and
	// an output, and exits 0 (the suite's input has "mode":"print"). Optional: a tier without
	// standard streams (in-process functions) leaves it zero.
	Print sandbox.Call
	// Leftovers lists what calls of this sandbox created that still exists on the host
	// (processes, mounts, cgroups, files); nil when nothing. Optional.
	Leftovers func() []string
	// Slack is how long past a deadline a tier may take to stop a call (default 3 s: a VM is
	// killed and reaped, a container destroyed).
	Slack time.Duration
	// Concurrency is how many calls the concurrent tests make at once (default 4; a tier whose
	// calls each hold a core, like a software-emulated VM, may ask for fewer).
	Concurrency int
}

// Factory builds a Subject for one subtest. It skips t when the tier cannot run here.
type Factory func(t *testing.T) Subject

// Run runs the conformance suite against the sandboxes f builds.
func Run(t *testing.T, f Factory) {
	t.Run("Answers", func(t *testing.T) { testAnswers(t, f(t)) })
	t.Run("DeadlineIsTimeout", func(t *testing.T) { testDeadline(t, f(t)) })
	t.Run("CancelIsCanceled", func(t *testing.T) { testCancel(t, f(t)) })
	t.Run("CancelBeforeStart", func(t *testing.T) { testCancelBeforeStart(t, f(t)) })
	t.Run("CloseWaitsForCalls", func(t *testing.T) { testCloseWaits(t, f(t)) })
	t.Run("RunAfterCloseFails", func(t *testing.T) { testRunAfterClose(t, f(t)) })
	t.Run("ConcurrentCalls", func(t *testing.T) { testConcurrent(t, f(t), true) })
	t.Run("ConcurrentFirstCalls", func(t *testing.T) { testConcurrent(t, f(t), false) })
	t.Run("StdoutApart", func(t *testing.T) { testStdoutApart(t, f(t)) })
}

// What Subject.Print's tool writes.
const (
	PrintStdout = "conformance: to stdout"
	PrintStderr = "conformance: to stderr"
)

func testStdoutApart(t *testing.T, s Subject) {
	defer s.checkClean(t)
	defer s.close(t)
	if s.Print.Tool == "" {
		t.Skip("this tier's tools have no standard streams")
	}
	s.setUp(t, s.Print)
	out, err := s.Sandbox.Run(context.Background(), withInput(s.Print, `{"mode":"print"}`))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out.ExitCode != 0 || out.Output == nil {
		t.Fatalf("exit code %d, output %q, stderr %q", out.ExitCode, out.Output, out.Stderr)
	}
	if !strings.Contains(out.Stdout, PrintStdout) || strings.Contains(out.Stdout, PrintStderr) {
		t.Errorf("Stdout %q: want %q alone", out.Stdout, PrintStdout)
	}
	if !strings.Contains(out.Stderr, PrintStderr) || strings.Contains(out.Stderr, PrintStdout) {
		t.Errorf("Stderr %q: want %q alone", out.Stderr, PrintStderr)
	}
}

func (s Subject) slack() time.Duration {
	if s.Slack > 0 {
		return s.Slack
	}
	return 3 * time.Second
}

func (s Subject) close(t *testing.T) {
	t.Helper()
	if err := s.Sandbox.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// setUp does what the executor does before a call's clock starts: the tier's Setup (compiling a
// module is the platform's cost, not the tool's).
func (s Subject) setUp(t *testing.T, calls ...sandbox.Call) {
	t.Helper()
	su, ok := s.Sandbox.(sandbox.Setupper)
	if !ok {
		return
	}
	for _, c := range calls {
		if err := su.Setup(context.Background(), c); err != nil {
			t.Fatalf("Setup: %v", err)
		}
	}
}

// checkClean fails t when the sandbox left something behind. Teardown may finish off the call
// path, so it is polled until the sandbox is closed (Close waits for every teardown).
func (s Subject) checkClean(t *testing.T) {
	t.Helper()
	if s.Leftovers == nil {
		return
	}
	if left := s.Leftovers(); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

func withInput(c sandbox.Call, input string) sandbox.Call {
	c.Input = []byte(input)
	return c
}

func testAnswers(t *testing.T, s Subject) {
	defer s.checkClean(t)
	defer s.close(t)
	s.setUp(t, s.Answer, s.Hang)
	in := `{"mode":"echo","n":42}`
	// The tier tells when the tool exited (sandbox.ToolExited), once: tracing splits the call's
	// run from its teardown there.
	exited := 0
	ctx := sandbox.WithExitHook(context.Background(), func() { exited++ })
	out, err := s.Sandbox.Run(ctx, withInput(s.Answer, in))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if exited != 1 {
		t.Errorf("the tier reported the tool's exit %d times (sandbox.ToolExited), want once", exited)
	}
	if out.ExitCode != 0 {
		t.Fatalf("exit code %d, stderr %q", out.ExitCode, out.Stderr)
	}
	var got, want any
	if err := json.Unmarshal(out.Output, &got); err != nil {
		t.Fatalf("output %q: %v", out.Output, err)
	}
	json.Unmarshal([]byte(in), &want)
	gb, _ := json.Marshal(got)
	wb, _ := json.Marshal(want)
	if string(gb) != string(wb) {
		t.Fatalf("output %s, want the input %s", gb, wb)
	}
	if out.Backend == "" {
		t.Error("Outcome.Backend is empty")
	}
}

func testDeadline(t *testing.T, s Subject) {
	defer s.checkClean(t)
	defer s.close(t)
	s.setUp(t, s.Answer, s.Hang)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Sandbox.Run(ctx, s.Hang)
	if !errors.Is(err, isolation.ErrTimeout) {
		t.Fatalf("Run at the deadline: %v, want an error matching isolation.ErrTimeout", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("a deadline also matches context.Canceled: %v", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond+s.slack() {
		t.Errorf("Run returned %s after a 500ms deadline", d)
	}
}

func testCancel(t *testing.T, s Subject) {
	defer s.checkClean(t)
	defer s.close(t)
	s.setUp(t, s.Answer, s.Hang)
	ctx, cancel := context.WithCancel(context.Background())
	// The call is cancelled whether or not the tool has started yet: either way the contract
	// is context.Canceled, so no readiness signal is needed.
	timer := time.AfterFunc(300*time.Millisecond, cancel)
	defer timer.Stop()
	start := time.Now()
	_, err := s.Sandbox.Run(ctx, s.Hang)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after cancellation: %v, want an error matching context.Canceled", err)
	}
	if errors.Is(err, isolation.ErrTimeout) {
		t.Errorf("a cancellation also matches isolation.ErrTimeout (a client that left is not a slow tool): %v", err)
	}
	if d := time.Since(start); d > 300*time.Millisecond+s.slack() {
		t.Errorf("Run returned %s after being cancelled at 300ms", d)
	}
}

func testCancelBeforeStart(t *testing.T, s Subject) {
	defer s.checkClean(t)
	defer s.close(t)
	s.setUp(t, s.Answer, s.Hang)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Sandbox.Run(ctx, s.Answer)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run with a cancelled context: %v, want context.Canceled", err)
	}
}

func testCloseWaits(t *testing.T, s Subject) {
	defer s.checkClean(t)
	s.setUp(t, s.Hang)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan time.Time, 1)
	errc := make(chan error, 1)
	go func() {
		_, err := s.Sandbox.Run(ctx, s.Hang)
		done <- time.Now()
		errc <- err
	}()
	// Close while the call is in flight (or about to start: then Run must fail instead).
	time.Sleep(200 * time.Millisecond)
	s.close(t)
	closed := time.Now()
	// Run may return a moment after Close (its last instructions run after the sandbox counted
	// it done), but not seconds later: a Close that did not wait returns at once while the call
	// runs on until its 3 s deadline.
	if returned := <-done; returned.Sub(closed) > time.Second {
		t.Errorf("Close returned %s before the call in flight did", returned.Sub(closed).Round(time.Millisecond))
	}
	if err := <-errc; err == nil {
		t.Error("a call that never ends returned no error")
	}
	// Close twice is fine.
	if err := s.Sandbox.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func testRunAfterClose(t *testing.T, s Subject) {
	defer s.checkClean(t)
	s.close(t)
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Run after Close panicked: %v", r)
			}
		}()
		_, err = s.Sandbox.Run(context.Background(), s.Answer)
	}()
	if err == nil {
		t.Fatal("Run after Close succeeded")
	}
	if err := s.Sandbox.Close(); err != nil {
		t.Errorf("Close after Close: %v", err)
	}
}

// testConcurrent runs calls at once; without setUp first, each call's own Setup is concurrent
// with the others' (the first calls of a tool a sandbox has not seen race on its caches: run the
// suite with -race).
func testConcurrent(t *testing.T, s Subject, setUpFirst bool) {
	defer s.checkClean(t)
	defer s.close(t)
	if setUpFirst {
		s.setUp(t, s.Answer)
	}
	n := 4
	if s.Concurrency > 0 {
		n = s.Concurrency
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([]sandbox.Outcome, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c := withInput(s.Answer, `{"mode":"echo","i":`+string(rune('0'+i))+`}`)
			c.ID = c.ID + "-" + string(rune('a'+i))
			if su, ok := s.Sandbox.(sandbox.Setupper); ok && !setUpFirst {
				if errs[i] = su.Setup(context.Background(), c); errs[i] != nil {
					return
				}
			}
			outs[i], errs[i] = s.Sandbox.Run(context.Background(), c)
		}(i)
	}
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Errorf("call %d: %v", i, errs[i])
			continue
		}
		var got struct {
			Mode string
			I    int
		}
		if err := json.Unmarshal(outs[i].Output, &got); err != nil || got.I != i || got.Mode != "echo" {
			t.Errorf("call %d: output %q, want its own input back", i, outs[i].Output)
		}
	}
}
