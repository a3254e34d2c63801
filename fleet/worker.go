package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/fleet/internal/wire"
	"github.com/axocoatl/isolation/internal/tracing"
	"github.com/axocoatl/isolation/sandbox"
)

// WorkerConfig configures a worker. StartWorker copies it.
type WorkerConfig struct {
	// Conn is the worker's NATS connection. Required; the caller closes it after the worker.
	Conn *nats.Conn
	// Executor runs the calls (this host's tiers). Required; the caller closes it after the
	// worker. Its catalog's tools are offered, with the digest of their folder.
	Executor *executor.Executor
	// Host names this host in the service metadata (default os.Hostname).
	Host string
	// Version is this build's version, in the service metadata.
	Version string
	// Slots bounds the calls of each tier this worker runs at once; a call over it is answered
	// busy, and the gateway tries another worker. Defaults: None 4×GOMAXPROCS, Wasmtime
	// GOMAXPROCS, Oci 2×GOMAXPROCS, Firecracker GOMAXPROCS.
	Slots map[isolation.Tier]int
	// Heartbeat is the interval of a running call's heartbeats (default 200 ms).
	Heartbeat time.Duration
	// Rescan is how often the catalog is read again for new or changed tools (default 5 s;
	// Resync forces one).
	Rescan time.Duration
	// Store, when set, adds the tools published to the fleet's buckets (see Store).
	Store *Store
	// Digests caches the local tools' digests (default: a cache of the worker's own).
	Digests *Digests
	Logger  *slog.Logger
}

// Worker serves calls routed to this host. Close stops it.
type Worker struct {
	cfg   WorkerConfig
	id    string
	nc    *nats.Conn
	exec  *executor.Executor
	log   *slog.Logger
	tiers map[isolation.Tier]*tierSlots // fixed at start: the tiers this host runs
	svc   micro.Service

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // calls in flight and the rescan loop

	syncMu sync.Mutex // serialises Resync

	mu        sync.Mutex // protects offers, calls, cancelled, closed
	offers    map[string]*offer
	calls     map[string]*running
	cancelled map[string]cancelMark
	closed    bool

	cancelSub *nats.Subscription
	directSub *nats.Subscription
	resync    chan struct{}
	jobs      chan func() // to idle runners (see spawn)
}

type tierSlots struct {
	slots int
	busy  atomic.Int64
	calls atomic.Int64 // calls run (accepted)
	busyN atomic.Int64 // calls answered busy
}

// offer is one run subject this worker serves: a tool version in a tier.
type offer struct {
	subject string
	tier    isolation.Tier
	tool    *catalog.Tool
	digest  string
	sub     *nats.Subscription
}

type running struct {
	attempt int
	cancel  context.CancelFunc
}

// cancelMark remembers a cancel that arrived before (or without) its call.
type cancelMark struct {
	attempt int // cancels attempts up to this one; 0: all
	at      time.Time
}

const maxCancelMarks = 4096

// StartWorker probes the executor's tiers, registers the micro service and subscribes to the
// run subjects of every tool it holds, in each tier it can run it.
func StartWorker(ctx context.Context, cfg WorkerConfig) (*Worker, error) {
	if cfg.Conn == nil || cfg.Executor == nil {
		return nil, errors.New("fleet: WorkerConfig.Conn and Executor are required")
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 200 * time.Millisecond
	}
	if cfg.Rescan <= 0 {
		cfg.Rescan = 5 * time.Second
	}
	if cfg.Digests == nil {
		cfg.Digests = NewDigests()
	}
	if cfg.Host == "" {
		cfg.Host, _ = os.Hostname()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	w := &Worker{cfg: cfg, id: strings.ReplaceAll(uuid.NewString(), "-", ""), nc: cfg.Conn, exec: cfg.Executor,
		tiers: map[isolation.Tier]*tierSlots{}, offers: map[string]*offer{}, calls: map[string]*running{},
		cancelled: map[string]cancelMark{}, resync: make(chan struct{}, 1), jobs: make(chan func())}
	w.log = cfg.Logger.With("worker", w.id)
	w.ctx, w.cancel = context.WithCancel(context.Background())
	n := runtime.GOMAXPROCS(0)
	defSlots := map[isolation.Tier]int{isolation.TierNone: 4 * n, isolation.TierWasm: n, isolation.TierOCI: 2 * n, isolation.TierMicroVM: n}
	var names []string
	for _, ts := range w.exec.Tiers(ctx) {
		if !ts.Available {
			continue
		}
		s := cfg.Slots[ts.Tier]
		if s <= 0 {
			s = defSlots[ts.Tier]
		}
		w.tiers[ts.Tier] = &tierSlots{slots: s}
		names = append(names, ts.Tier.String())
	}
	var err error
	w.cancelSub, err = w.nc.Subscribe(wire.CancelWildcard, w.handleCancel)
	if err != nil {
		return nil, err
	}
	w.directSub, err = w.nc.Subscribe(wire.DirectPrefix+w.id+".>", func(m *nats.Msg) {
		if subj, ok := wire.RunSubjectOfDirect(w.id, m.Subject); ok {
			w.handle(subj, m)
		}
	})
	if err != nil {
		w.cancelSub.Unsubscribe()
		return nil, err
	}
	w.svc, err = micro.AddService(w.nc, micro.Config{
		Name: wire.ServiceName, Version: "1.0.0", Description: "axocoatl-isolation fleet worker",
		Metadata: map[string]string{"host": cfg.Host, "tiers": strings.Join(names, ","), "version": cfg.Version, "worker": w.id},
		// The status endpoint is addressed per worker; its stats carry Status.
		StatsHandler: func(*micro.Endpoint) any { return w.Status() },
	})
	if err != nil {
		w.cancelSub.Unsubscribe()
		return nil, err
	}
	if err := w.svc.AddEndpoint("status", micro.HandlerFunc(func(r micro.Request) { r.RespondJSON(w.Status()) }),
		micro.WithEndpointSubject(wire.Prefix+".worker."+w.id+".status"), micro.WithEndpointQueueGroupDisabled()); err != nil {
		w.Close()
		return nil, err
	}
	if err := w.Resync(ctx); err != nil {
		w.Close()
		return nil, err
	}
	w.wg.Add(1)
	go w.rescanLoop()
	w.log.Info("worker started", "host", cfg.Host, "tiers", names)
	return w, nil
}

// ID is this worker's id (in its service metadata and its replies).
func (w *Worker) ID() string { return w.id }

// Tiers are the tiers this worker runs.
func (w *Worker) Tiers() []isolation.Tier {
	var ts []isolation.Tier
	for t := range w.tiers {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
	return ts
}

func (w *Worker) rescanLoop() {
	defer w.wg.Done()
	t := time.NewTicker(w.cfg.Rescan)
	defer t.Stop()
	var storeCh <-chan struct{}
	if w.cfg.Store != nil {
		storeCh = w.cfg.Store.Changed()
	}
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		case <-w.resync:
		case <-storeCh:
		}
		if err := w.Resync(w.ctx); err != nil && w.ctx.Err() == nil {
			w.log.Warn("resync failed", "error", err)
		}
	}
}

// artifact is one tool version this worker holds.
type artifact struct {
	tool   *catalog.Tool
	digest string
}

// artifacts lists the tools held: the executor's catalog (digests of the folders as they are
// now) and the Store's verified versions.
func (w *Worker) artifacts() []artifact {
	var out []artifact
	tools, errs := w.exec.Tools()
	for _, err := range errs {
		w.log.Debug("tool not offered", "error", err)
	}
	for _, t := range tools {
		if d, ok := w.cfg.Store.DigestOf(t); ok {
			out = append(out, artifact{t, d}) // a published version (the tools root is the store's)
			continue
		}
		d, err := w.cfg.Digests.Of(t)
		if err != nil {
			w.log.Warn("tool not offered: no digest", "tool", t.Name, "error", err)
			continue
		}
		out = append(out, artifact{t, d})
	}
	if w.cfg.Store != nil {
		for _, a := range w.cfg.Store.Held() {
			out = append(out, artifact{a.Tool, a.Digest})
		}
	}
	return out
}

// Resync reads the tools again and makes the subscriptions match: a new tool version is prepared
// (Wasm compiled, pools warmed) before its subject is subscribed; a version no longer held is
// unsubscribed (its calls in flight finish).
func (w *Worker) Resync(ctx context.Context) error {
	w.syncMu.Lock()
	defer w.syncMu.Unlock()
	want := map[string]*offer{}
	for _, a := range w.artifacts() {
		for t := range w.tiers {
			if _, err := w.exec.Select(ctx, a.tool, executor.WithTier(t)); err != nil {
				continue // this tier cannot run it
			}
			subj, err := wire.RunSubject(t, a.tool.Name, a.digest)
			if err != nil {
				w.log.Warn("tool not offered", "tool", a.tool.Name, "error", err)
				continue
			}
			want[subj] = &offer{subject: subj, tier: t, tool: a.tool, digest: a.digest}
		}
	}
	w.mu.Lock()
	var add []*offer
	for subj, o := range want {
		if cur, ok := w.offers[subj]; ok {
			cur.tool = o.tool // same digest: same content; keep the newest load
			continue
		}
		add = append(add, o)
	}
	var drop []*offer
	for subj, o := range w.offers {
		if _, ok := want[subj]; !ok {
			drop = append(drop, o)
			delete(w.offers, subj)
		}
	}
	closed := w.closed
	w.mu.Unlock()
	if closed {
		return nil
	}
	for _, o := range drop {
		if o.sub != nil {
			o.sub.Unsubscribe()
		}
		w.log.Info("offer withdrawn", "tool", o.tool.Name, "tier", o.tier.String(), "digest", o.digest)
	}
	for _, o := range add {
		if err := w.exec.Prepare(ctx, o.tool.Name, executor.WithTier(o.tier), executor.WithTool(o.tool)); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			w.log.Warn("tool not prepared; offered anyway (its first call runs cold)", "tool", o.tool.Name, "tier", o.tier.String(), "error", err)
		}
		w.mu.Lock()
		if w.closed {
			w.mu.Unlock()
			return nil
		}
		w.offers[o.subject] = o
		w.mu.Unlock()
		sub, err := w.nc.QueueSubscribe(o.subject, wire.QueueGroup, w.handleRun)
		if err != nil {
			w.mu.Lock()
			delete(w.offers, o.subject)
			w.mu.Unlock()
			return fmt.Errorf("fleet: subscribe %s: %w", o.subject, err)
		}
		w.mu.Lock()
		o.sub = sub
		w.mu.Unlock()
		w.log.Info("offering", "tool", o.tool.Name, "tier", o.tier.String(), "digest", o.digest)
	}
	if len(add) > 0 {
		// The server has the subscriptions before a gateway counts on them.
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return w.nc.FlushWithContext(fctx)
	}
	return nil
}

// TriggerResync asks the rescan loop for a Resync now.
func (w *Worker) TriggerResync() {
	select {
	case w.resync <- struct{}{}:
	default:
	}
}

func (w *Worker) reply(to, kind string, body []byte) {
	if to == "" {
		return
	}
	m := &nats.Msg{Subject: to, Header: nats.Header{wire.HReply: []string{kind}, wire.HWorker: []string{w.id}}, Data: body}
	if err := w.nc.PublishMsg(m); err != nil {
		w.log.Debug("reply not sent", "kind", kind, "error", err)
	}
}

// handleRun runs on the subscription's delivery goroutine: it decides at once (busy, or
// accepted and a goroutine for the call) so that no call waits behind another.
func (w *Worker) handleRun(m *nats.Msg) { w.handle(m.Subject, m) }

// handle serves a call of the offer subj (the run subject, also for a direct call).
func (w *Worker) handle(subj string, m *nats.Msg) {
	w.mu.Lock()
	o, ok := w.offers[subj]
	var tool *catalog.Tool
	if ok {
		tool = o.tool
	}
	w.mu.Unlock()
	if !ok || m.Reply == "" {
		return // withdrawn meanwhile: the gateway's accept window passes and it tries again
	}
	callID := m.Header.Get(wire.HCallID)
	attempt, _ := strconv.Atoi(m.Header.Get(wire.HAttempt))
	if !wire.ValidCallID(callID) || attempt < 1 {
		w.reply(m.Reply, wire.ReplyDone, doneError(isolation.Errorf(isolation.ErrInvalidInput, "fleet: a run request needs a valid %s and %s", wire.HCallID, wire.HAttempt)))
		return
	}
	now := time.Now()
	if by, err := strconv.ParseInt(m.Header.Get(wire.HAcceptBy), 10, 64); err == nil && now.UnixMilli() > by {
		return // the gateway has given up on this attempt: starting it could run the call twice
	}
	ts := w.tiers[o.tier]
	if ts.busy.Add(1) > int64(ts.slots) {
		ts.busy.Add(-1)
		ts.busyN.Add(1)
		w.reply(m.Reply, wire.ReplyBusy, nil)
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	if ms, err := strconv.ParseInt(m.Header.Get(wire.HDeadline), 10, 64); err == nil {
		var c2 context.CancelFunc
		ctx, c2 = context.WithDeadline(ctx, time.UnixMilli(ms))
		cancel = joinCancel(cancel, c2)
	}
	w.mu.Lock()
	mark, marked := w.cancelled[callID]
	_, dup := w.calls[callID]
	if w.closed || dup || (marked && (mark.attempt == 0 || mark.attempt >= attempt)) {
		w.mu.Unlock()
		ts.busy.Add(-1)
		cancel()
		return
	}
	w.calls[callID] = &running{attempt: attempt, cancel: cancel}
	w.wg.Add(1)
	w.mu.Unlock()
	ts.calls.Add(1)
	// "accepted" leaves before the tool starts: a worker killed at any point after the start
	// has told the gateway, which then reports worker_lost instead of running the call again.
	// (Holding it back for calls that end within 2 ms saved ~10 % CPU per trivial call, and
	// re-ran every call whose worker died within those 2 ms: measured, and not done.)
	w.reply(m.Reply, wire.ReplyAccepted, nil)
	w.spawn(func() { w.run(ctx, cancel, m, o.tier, tool, callID, ts) })
}

// spawn runs job on an idle runner goroutine, or a new one. Runners stay for runnerIdle after
// their last call: a call then starts without a new goroutine, on a stack already grown to what
// a tier's call needs (a fresh goroutine per Wasm call measured ~0.1 ms slower here, in one
// noisy comparison). There are never more runners than calls in flight at once, which the
// slots bound.
func (w *Worker) spawn(job func()) {
	select {
	case w.jobs <- job:
	default:
		go w.runner(job)
	}
}

const runnerIdle = 30 * time.Second

func (w *Worker) runner(job func()) {
	idle := time.NewTimer(runnerIdle)
	defer idle.Stop()
	for {
		job()
		idle.Reset(runnerIdle)
		select {
		case job = <-w.jobs:
		case <-idle.C:
			return
		case <-w.ctx.Done():
			return
		}
	}
}

func joinCancel(a, b context.CancelFunc) context.CancelFunc { return func() { b(); a() } }

func (w *Worker) run(ctx context.Context, cancel context.CancelFunc, m *nats.Msg, tier isolation.Tier, tool *catalog.Tool, callID string, ts *tierSlots) {
	defer w.wg.Done()
	hb := w.startHeartbeats(m.Reply)
	body := w.execute(ctx, m, tier, tool, callID)
	hb.stop()
	// The slot is free before "done" leaves: the caller's next call may arrive at once.
	w.mu.Lock()
	delete(w.calls, callID)
	w.mu.Unlock()
	cancel()
	ts.busy.Add(-1)
	w.reply(m.Reply, wire.ReplyDone, body)
}

// heartbeats sends a running call's heartbeats from a timer: no goroutine per call, and nothing
// for "done" to wait for.
type heartbeats struct {
	mu      sync.Mutex // protects stopped, t; orders the heartbeats before "done"
	stopped bool
	t       *time.Timer
}

func (w *Worker) startHeartbeats(reply string) *heartbeats {
	h := &heartbeats{}
	var fire func()
	fire = func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.stopped {
			return
		}
		w.reply(reply, wire.ReplyHeartbeat, nil)
		h.t = time.AfterFunc(w.cfg.Heartbeat, fire)
	}
	h.mu.Lock()
	h.t = time.AfterFunc(w.cfg.Heartbeat, fire)
	h.mu.Unlock()
	return h
}

// stop ends the heartbeats; once it returns, no heartbeat of the call is sent.
func (h *heartbeats) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	h.t.Stop()
}

func (w *Worker) execute(ctx context.Context, m *nats.Msg, tier isolation.Tier, tool *catalog.Tool, callID string) []byte {
	opts := []executor.Option{executor.WithTier(tier), executor.WithTool(tool), executor.WithCallID(callID)}
	if d, err := time.ParseDuration(m.Header.Get(wire.HTimeout)); err == nil && d > 0 {
		opts = append(opts, executor.WithTimeout(d))
	}
	input := m.Data
	if ref := m.Header.Get(wire.HInputRef); ref != "" {
		var err error
		if input, err = w.fetchInput(ctx, ref); err != nil {
			return doneError(&isolation.Error{Kind: isolation.ErrSandboxFailed, Tool: tool.Name, Message: "fleet: the input could not be fetched", Err: err})
		}
	}
	w.log.Debug("call", "call_id", callID, "tool", tool.Name, "tier", tier.String(), "traceparent", m.Header.Get(wire.HTraceparent))
	ctx = tracing.Extract(ctx, m.Header.Get(wire.HTraceparent), m.Header.Get(wire.HTracestate))
	res, err := w.exec.Execute(ctx, tool.Name, input, opts...)
	if err != nil {
		return doneError(err)
	}
	b, err := json.Marshal(res)
	if err != nil {
		return doneError(err)
	}
	d, _ := json.Marshal(wire.Done{Result: b})
	return d
}

func (w *Worker) fetchInput(ctx context.Context, ref string) ([]byte, error) {
	if w.cfg.Store == nil {
		return nil, errors.New("this worker has no store for inputs sent by reference")
	}
	return w.cfg.Store.getInput(ctx, ref)
}

func doneError(err error) []byte {
	b, _ := json.Marshal(wire.Done{Error: wire.EncodeError(err)})
	return b
}

// handleCancel cancels a call (subject axoiso.v1.cancel.<call id>, body: the attempt up to which
// to cancel, empty for all) or remembers the cancel for a request still on its way.
func (w *Worker) handleCancel(m *nats.Msg) {
	callID := strings.TrimPrefix(m.Subject, wire.CancelPrefix)
	if !wire.ValidCallID(callID) {
		return
	}
	attempt, _ := strconv.Atoi(string(m.Data))
	w.mu.Lock()
	defer w.mu.Unlock()
	if r, ok := w.calls[callID]; ok && (attempt == 0 || r.attempt <= attempt) {
		r.cancel()
		w.log.Info("call cancelled by the gateway", "call_id", callID)
	}
	if len(w.cancelled) >= maxCancelMarks {
		cutoff := time.Now().Add(-time.Minute)
		for k, v := range w.cancelled {
			if v.at.Before(cutoff) || len(w.cancelled) >= maxCancelMarks {
				delete(w.cancelled, k)
			}
		}
	}
	w.cancelled[callID] = cancelMark{attempt: attempt, at: time.Now()}
}

// TierStatus is one tier's state on a worker.
type TierStatus struct {
	Tier  isolation.Tier `json:"tier"`
	Slots int            `json:"slots"`
	Busy  int64          `json:"busy"`
	// Warm is the ready items of the tier's warm pools.
	Warm int `json:"warm"`
	// Calls and Refused count the calls accepted and answered busy since the start.
	Calls   int64 `json:"calls"`
	Refused int64 `json:"refused"`
}

// Offer is a tool version a worker serves.
type Offer struct {
	Tool   string         `json:"tool"`
	Tier   isolation.Tier `json:"tier"`
	Digest string         `json:"digest"`
}

// Status is what a worker reports in its service stats (and `axoiso fleet` prints).
type Status struct {
	ID      string       `json:"id"`
	Host    string       `json:"host"`
	Version string       `json:"version"`
	Tiers   []TierStatus `json:"tiers"`
	Offers  []Offer      `json:"offers"`
}

// Status reports this worker's tiers, load and offers.
func (w *Worker) Status() Status {
	st := Status{ID: w.id, Host: w.cfg.Host, Version: w.cfg.Version}
	for _, t := range w.Tiers() {
		s := w.tiers[t]
		ts := TierStatus{Tier: t, Slots: s.slots, Busy: max(s.busy.Load(), 0), Calls: s.calls.Load(), Refused: s.busyN.Load()}
		if sb, ok := w.exec.Sandbox(t); ok {
			if p, ok := sb.(sandbox.Pooler); ok {
				for _, ps := range p.PoolStats() {
					ts.Warm += ps.Ready
				}
			}
		}
		st.Tiers = append(st.Tiers, ts)
	}
	w.mu.Lock()
	for _, o := range w.offers {
		st.Offers = append(st.Offers, Offer{Tool: o.tool.Name, Tier: o.tier, Digest: o.digest})
	}
	w.mu.Unlock()
	sort.Slice(st.Offers, func(i, j int) bool {
		a, b := st.Offers[i], st.Offers[j]
		if a.Tool != b.Tool {
			return a.Tool < b.Tool
		}
		return a.Tier < b.Tier
	})
	return st
}

// Close stops taking calls (unsubscribes, leaves the service), cancels the calls in flight and
// waits for them to answer. It does not close the connection or the executor.
func (w *Worker) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	offers := w.offers
	w.offers = map[string]*offer{}
	w.mu.Unlock()
	for _, o := range offers {
		if o.sub != nil {
			o.sub.Unsubscribe()
		}
	}
	if w.svc != nil {
		w.svc.Stop()
	}
	if w.cancelSub != nil {
		w.cancelSub.Unsubscribe()
	}
	if w.directSub != nil {
		w.directSub.Unsubscribe()
	}
	w.cancel()
	w.wg.Wait()
	w.nc.Flush()
	return nil
}
