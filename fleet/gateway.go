package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/fleet/internal/wire"
	"github.com/axocoatl/isolation/internal/tracing"
)

// GatewayConfig configures a gateway. NewGateway copies it.
type GatewayConfig struct {
	// Conn is the gateway's NATS connection. Required; the caller closes it after the gateway.
	Conn *nats.Conn
	// Digests computes the digests of the gateway's tools (default: a cache of its own). A
	// gateway and its workers must read the same tool folders, or the same published versions.
	Digests *Digests
	// Store, when set, resolves tools to their published digests and carries inputs over
	// wire.InlineInputMax.
	Store *Store
	// AcceptWindow is how long after the request a worker may still start the call (its
	// Accept-By); the gateway waits acceptSlack more for "accepted", then cancels
	// that attempt and tries another worker: the call has not started then. Default 60 ms: a
	// call the servers hand to a worker in the instant it dies goes elsewhere after 100 ms. Set
	// it above the one-way latency to the workers plus their clocks' skew.
	AcceptWindow time.Duration
	// HeartbeatTimeout: after "accepted", a call silent this long has lost its worker (default
	// 1 s: five missed 200 ms heartbeats).
	HeartbeatTimeout time.Duration
	// MaxAttempts bounds the workers asked per tier when they answer busy or not at all, and the
	// runs of an idempotent tool whose worker was lost (default 3).
	MaxAttempts int
	// Metrics, when set, records routed calls.
	Metrics *Metrics
	Logger  *slog.Logger
}

// Gateway routes calls to workers; it is an executor.Remote. Safe for concurrent use.
type Gateway struct {
	cfg    GatewayConfig
	nc     *nats.Conn
	log    *slog.Logger
	prefix string // this gateway's reply inbox prefix: <prefix>.<n>
	sub    *nats.Subscription
	seq    atomic.Uint64

	mu      sync.Mutex // protects waiters
	waiters map[string]chan *nats.Msg

	closeOnce sync.Once
	refreshMu sync.Mutex    // one discovery round at a time
	viewUsed  atomic.Int64  // when a call last used the view (Unix ns)
	kick      chan struct{} // asks viewLoop for a refresh now
	stop      chan struct{}
	loopDone  chan struct{}

	viewMu sync.Mutex // protects view, viewAt
	view   []Status
	viewAt time.Time

	healthMu sync.Mutex           // protects alive, suspect, running
	alive    map[string]time.Time // worker id → its last "accepted"
	suspect  map[string]time.Time // worker id → when it was lost
	running  map[string]int       // worker id → this gateway's calls it runs now
}

// acceptSlack is how long past an attempt's Accept-By the gateway still waits for "accepted": a
// worker that started the call just before Accept-By is heard from within it (LAN transit and
// NTP's skew), so the gateway does not retry a call that started.
const acceptSlack = 40 * time.Millisecond

// suspectFor is how long a lost worker is not chosen for a direct retry.
const suspectFor = 30 * time.Second

var _ executor.Remote = (*Gateway)(nil)

// NewGateway subscribes to the gateway's inbox.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if cfg.Conn == nil {
		return nil, errors.New("fleet: GatewayConfig.Conn is required")
	}
	if cfg.Digests == nil {
		cfg.Digests = NewDigests()
	}
	if cfg.AcceptWindow <= 0 {
		cfg.AcceptWindow = 60 * time.Millisecond
	}
	if cfg.HeartbeatTimeout <= 0 {
		cfg.HeartbeatTimeout = time.Second
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{cfg: cfg, nc: cfg.Conn, log: cfg.Logger, prefix: cfg.Conn.NewRespInbox(), waiters: map[string]chan *nats.Msg{},
		alive: map[string]time.Time{}, suspect: map[string]time.Time{}, running: map[string]int{}}
	sub, err := g.nc.Subscribe(g.prefix+".*", g.dispatch)
	if err != nil {
		return nil, err
	}
	// Replies come in bursts (200 calls' heartbeats); the defaults would drop them as a slow
	// consumer at 65,536 messages, which is fine, but never below.
	sub.SetPendingLimits(-1, 64<<20)
	g.sub = sub
	g.kick, g.stop, g.loopDone = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	g.kick <- struct{}{} // a first view before the first call needs one
	go g.viewLoop()
	return g, g.nc.Flush()
}

// Close unsubscribes the inbox and stops the view's refresh; calls in flight end with their
// context's error or worker lost.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		close(g.stop)
		<-g.loopDone
	})
	if g.sub != nil {
		return g.sub.Unsubscribe()
	}
	return nil
}

func (g *Gateway) dispatch(m *nats.Msg) {
	g.mu.Lock()
	ch, ok := g.waiters[m.Subject]
	g.mu.Unlock()
	if !ok {
		return // an abandoned attempt's late reply
	}
	select {
	case ch <- m:
	default:
		// The call's goroutine reads continuously; a full buffer means it has just returned, or
		// a flood of heartbeats, which may be dropped. A final answer may not: hand it over
		// without blocking the inbox.
		if m.Header.Get(wire.HReply) == wire.ReplyDone {
			go func() {
				select {
				case ch <- m:
				case <-time.After(g.cfg.HeartbeatTimeout):
				}
			}()
		}
	}
}

// errNoResponders: nobody subscribes to the subject: no worker in the fleet runs this tool
// version in this tier.
var errNoResponders = errors.New("no responders")

// Run routes a call: isolation.Select over the fleet (a tier is available while some worker
// answers its subject), ideal tier first; no responders in a tier → the next one, reported as a
// downgrade as on one host and refused under strict; busy workers → ErrBusy, never a weaker
// tier.
func (g *Gateway) Run(ctx context.Context, rc executor.RemoteCall) (*executor.Result, error) {
	start := time.Now()
	tool := rc.Tool
	digest, err := g.digestOf(rc)
	if err != nil {
		return nil, &isolation.Error{Kind: isolation.ErrInvalidTool, Tool: tool.Name, Message: "fleet: no digest", Err: err}
	}
	gone := map[isolation.Tier]string{}
	var first *isolation.Tier
	for {
		sel, err := isolation.Select(tool.Runtime, rc.Policy, func(t isolation.Tier) isolation.Candidate {
			if why, ok := gone[t]; ok {
				return isolation.Candidate{Availability: isolation.Availability{Reason: why}}
			}
			return isolation.Candidate{Availability: isolation.Availability{Available: true}}
		})
		if err != nil {
			var ie *isolation.Error
			if errors.As(err, &ie) {
				ie.Tool, ie.CallID = tool.Name, rc.ID
			}
			g.cfg.Metrics.outcome(err, start)
			return nil, err
		}
		if first == nil {
			t := sel.Tier
			first = &t
		}
		res, err := g.runTier(ctx, rc, sel, digest)
		for _, older := range g.cfg.Store.fallbackDigests(tool.Name, digest) {
			if !errors.Is(err, errNoResponders) {
				break
			}
			// Just published: workers still taking the new version serve the previous one,
			// whole, rather than the call dropping to a weaker tier.
			res, err = g.runTier(ctx, rc, sel, older)
		}
		if errors.Is(err, errNoResponders) {
			gone[sel.Tier] = fmt.Sprintf("no worker in the fleet runs %s@%.12s in it", tool.Name, digest)
			continue
		}
		if err == nil && sel.Tier != *first {
			g.cfg.Metrics.fallback(*first, sel.Tier, "no_responders")
		}
		g.cfg.Metrics.outcome(err, start)
		return res, err
	}
}

func (g *Gateway) digestOf(rc executor.RemoteCall) (string, error) {
	if g.cfg.Store != nil {
		if d, ok := g.cfg.Store.DigestOf(rc.Tool); ok {
			return d, nil
		}
	}
	return g.cfg.Digests.Of(rc.Tool)
}

// runTier asks the workers of one tier, up to MaxAttempts times.
func (g *Gateway) runTier(ctx context.Context, rc executor.RemoteCall, sel isolation.Selection, digest string) (*executor.Result, error) {
	subj, err := wire.RunSubject(sel.Tier, rc.Tool.Name, digest)
	if err != nil {
		return nil, &isolation.Error{Kind: isolation.ErrInvalidToolName, Tool: rc.Tool.Name, Message: err.Error()}
	}
	var inputRef string
	if len(rc.Input) > wire.InlineInputMax {
		if g.cfg.Store == nil {
			return nil, &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: rc.Tool.Name, Message: fmt.Sprintf("fleet: an input over %d bytes needs JetStream (the inputs bucket)", wire.InlineInputMax)}
		}
		if inputRef, err = g.cfg.Store.putInput(ctx, rc.ID, rc.Input); err != nil {
			return nil, &isolation.Error{Kind: isolation.ErrSandboxFailed, Tool: rc.Tool.Name, Message: "fleet: storing the input", Err: err}
		}
		defer g.cfg.Store.deleteInput(inputRef)
	}
	trace := callTrace(ctx)
	var busy, silent int
	direct := false
	// next: the worker the busy branch already picked for the next attempt ("" when none was).
	next := ""
	// failed: the workers this call asked directly that did not accept: not asked again.
	failed := map[string]bool{}
	for attempt := 1; attempt <= g.cfg.MaxAttempts; attempt++ {
		target, targetID := subj, ""
		if direct {
			// A worker stayed silent or was lost: the queue group may pick it again until the
			// servers drop it (pings, seconds), so ask a worker known to answer instead.
			id := next
			if id == "" {
				id = g.pickWorker(ctx, sel.Tier, rc.Tool.Name, digest, failed)
			}
			next = ""
			if id != "" {
				if d, err := wire.DirectSubject(id, subj); err == nil {
					target, targetID = d, id
				}
			}
		}
		r := g.attempt(ctx, target, digest, rc, attempt, inputRef, trace)
		if targetID != "" && (r.kind == outNoResponders || r.kind == outNoAccept) {
			// That worker is gone or silent (the tier is not): no other call should pick it
			// for a retry either.
			r.kind = outNoAccept
			failed[targetID] = true
			g.markSuspect(targetID)
		}
		switch r.kind {
		case outNoResponders:
			return nil, errNoResponders
		case outBusy:
			busy++
			g.cfg.Metrics.busyAnswer()
			// A queue group picks a member at random, so a busy one too while others have free
			// slots: ask directly the worker with the most slots this gateway does not fill.
			// Only when it knows of none, wait a little and let the queue group pick again.
			failed[r.worker] = true
			next = g.pickWorker(ctx, sel.Tier, rc.Tool.Name, digest, failed)
			direct = next != ""
			if !direct {
				time.Sleep(time.Duration(1+attempt*2) * time.Millisecond)
			}
			continue
		case outNoAccept:
			silent++
			direct = true
			g.cfg.Metrics.noAccept()
			continue
		case outLost:
			g.markSuspect(r.worker)
			direct = true
			g.cfg.Metrics.workerLost()
			if rc.Tool.Idempotent && attempt < g.cfg.MaxAttempts {
				g.log.Warn("worker lost; the tool is idempotent, running it again", "call_id", rc.ID, "tool", rc.Tool.Name, "worker", r.worker)
				continue
			}
			return nil, &isolation.Error{Kind: isolation.ErrWorkerLost, Tool: rc.Tool.Name, Tier: sel.Tier, HasTier: true, CallID: rc.ID,
				Message: fmt.Sprintf("worker %s accepted the call and sent nothing for %s; the tool may have run, and is not run again (it does not declare \"idempotent\": true)", r.worker, g.cfg.HeartbeatTimeout)}
		case outCtx:
			return nil, fmt.Errorf("tool %q: %w", rc.Tool.Name, ctx.Err())
		case outDone:
			return g.decode(rc, sel, r)
		}
	}
	return nil, &isolation.Error{Kind: isolation.ErrBusy, Tool: rc.Tool.Name, Tier: sel.Tier, HasTier: true, CallID: rc.ID,
		Message: fmt.Sprintf("fleet: %d workers of tier %s asked: %d busy, %d did not accept within %s", busy+silent, sel.Tier, busy, silent, g.cfg.AcceptWindow+acceptSlack)}
}

func (g *Gateway) decode(rc executor.RemoteCall, sel isolation.Selection, r attemptResult) (*executor.Result, error) {
	var d wire.Done
	if err := json.Unmarshal(r.msg.Data, &d); err != nil || (d.Error == nil && d.Result == nil) {
		return nil, &isolation.Error{Kind: isolation.ErrSandboxFailed, Tool: rc.Tool.Name, Tier: sel.Tier, HasTier: true, CallID: rc.ID, Message: fmt.Sprintf("fleet: worker %s sent an unreadable answer", r.worker), Err: err}
	}
	if d.Error != nil {
		err := d.Error.Decode(rc.Tool.Name)
		var ie *isolation.Error
		if errors.As(err, &ie) {
			ie.CallID = rc.ID
			if !ie.HasTier {
				ie.Tier, ie.HasTier = sel.Tier, true
			}
		}
		return nil, err
	}
	var res executor.Result
	if err := json.Unmarshal(d.Result, &res); err != nil {
		return nil, &isolation.Error{Kind: isolation.ErrSandboxFailed, Tool: rc.Tool.Name, Tier: sel.Tier, HasTier: true, CallID: rc.ID, Message: fmt.Sprintf("fleet: worker %s sent an unreadable result", r.worker), Err: err}
	}
	res.Tier, res.Ideal, res.Degraded = sel.Tier, sel.Ideal, sel.Degraded
	res.ToolDigest = r.digest
	res.Duration = time.Duration(res.DurationMS * float64(time.Millisecond))
	return &res, nil
}

type outcomeKind int

const (
	outDone outcomeKind = iota
	outNoResponders
	outBusy
	outNoAccept
	outLost
	outCtx
)

type attemptResult struct {
	kind   outcomeKind
	msg    *nats.Msg
	worker string
	digest string
}

// attempt sends the call once and follows it: accepted within the window, then heartbeats until
// done. An attempt given up before "accepted" is cancelled (a worker that receives it late does
// not start it: it is past Accept-By, or marked cancelled).
func (g *Gateway) attempt(ctx context.Context, subj, digest string, rc executor.RemoteCall, attempt int, inputRef string, trace traceContext) attemptResult {
	reply := g.prefix + "." + strconv.FormatUint(g.seq.Add(1), 36)
	ch := make(chan *nats.Msg, 32)
	g.mu.Lock()
	g.waiters[reply] = ch
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.waiters, reply)
		g.mu.Unlock()
	}()
	sent := time.Now()
	m := &nats.Msg{Subject: subj, Reply: reply, Header: nats.Header{
		wire.HCallID:      []string{rc.ID},
		wire.HAttempt:     []string{strconv.Itoa(attempt)},
		wire.HAcceptBy:    []string{strconv.FormatInt(sent.Add(g.cfg.AcceptWindow).UnixMilli(), 10)},
		wire.HTraceparent: []string{trace.parent},
	}}
	if trace.state != "" {
		m.Header.Set(wire.HTracestate, trace.state)
	}
	m.Header.Set(wire.HDigest, digest)
	if dl, ok := ctx.Deadline(); ok {
		m.Header.Set(wire.HDeadline, strconv.FormatInt(dl.UnixMilli(), 10))
	}
	if rc.Timeout > 0 {
		m.Header.Set(wire.HTimeout, rc.Timeout.String())
	}
	if inputRef != "" {
		m.Header.Set(wire.HInputRef, inputRef)
	} else {
		m.Data = rc.Input
	}
	if err := g.nc.PublishMsg(m); err != nil {
		g.log.Warn("publish failed", "call_id", rc.ID, "error", err)
		return attemptResult{kind: outNoAccept}
	}
	timer := time.NewTimer(g.cfg.AcceptWindow + acceptSlack)
	defer timer.Stop()
	accepted := false
	var worker string
	for {
		select {
		case <-ctx.Done():
			g.cancel(rc.ID, attempt)
			return attemptResult{kind: outCtx, worker: worker}
		case <-timer.C:
			if !accepted {
				g.cancel(rc.ID, attempt)
				return attemptResult{kind: outNoAccept}
			}
			return attemptResult{kind: outLost, worker: worker}
		case r := <-ch:
			if len(r.Data) == 0 && r.Header.Get("Status") == "503" {
				return attemptResult{kind: outNoResponders}
			}
			switch r.Header.Get(wire.HReply) {
			case wire.ReplyBusy:
				if !accepted {
					return attemptResult{kind: outBusy, worker: r.Header.Get(wire.HWorker)}
				}
			case wire.ReplyAccepted:
				if !accepted {
					accepted, worker = true, r.Header.Get(wire.HWorker)
					g.cfg.Metrics.phase("accept", time.Since(sent))
					g.markAlive(worker)
					g.track(worker, 1)
					defer g.track(worker, -1)
				}
			case wire.ReplyDone:
				g.cfg.Metrics.phase("run", time.Since(sent))
				return attemptResult{kind: outDone, msg: r, worker: r.Header.Get(wire.HWorker), digest: digest}
			}
			if accepted {
				timer.Reset(g.cfg.HeartbeatTimeout)
			}
		}
	}
}

// cancel tells every worker to stop (or never start) attempts up to attempt of call id.
func (g *Gateway) cancel(callID string, attempt int) {
	subj, err := wire.CancelSubject(callID)
	if err != nil {
		return
	}
	if err := g.nc.Publish(subj, []byte(strconv.Itoa(attempt))); err != nil {
		g.log.Debug("cancel not sent", "call_id", callID, "error", err)
	}
}

func (g *Gateway) markAlive(id string) {
	if id == "" {
		return
	}
	g.healthMu.Lock()
	defer g.healthMu.Unlock()
	if len(g.alive) > 4096 {
		clear(g.alive)
	}
	g.alive[id] = time.Now()
	delete(g.suspect, id)
}

func (g *Gateway) markSuspect(id string) {
	if id == "" {
		return
	}
	g.healthMu.Lock()
	defer g.healthMu.Unlock()
	if len(g.suspect) > 4096 {
		clear(g.suspect)
	}
	g.suspect[id] = time.Now()
}

// pickWorker chooses, among the workers of the fleet view offering this tool version in this
// tier, not lost lately and not in exclude, one with slots of the tier that this gateway's own
// calls leave free: the most of them, then the one that accepted a call most recently ("" when
// none is known). Other gateways' calls are not counted: a worker they fill answers busy.
func (g *Gateway) pickWorker(ctx context.Context, tier isolation.Tier, tool, digest string, exclude map[string]bool) string {
	ws := g.workers(ctx)
	g.healthMu.Lock()
	defer g.healthMu.Unlock()
	best, bestFree, bestAt := "", 0, time.Time{}
	for _, w := range ws {
		if at, ok := g.suspect[w.ID]; (ok && time.Since(at) < suspectFor) || exclude[w.ID] || !offers(w, tier, tool, digest) {
			continue
		}
		free := 0
		for _, ts := range w.Tiers {
			if ts.Tier == tier {
				free = ts.Slots - g.running[w.ID]
			}
		}
		if free <= 0 {
			continue
		}
		if at := g.alive[w.ID]; best == "" || free > bestFree || (free == bestFree && at.After(bestAt)) {
			best, bestFree, bestAt = w.ID, free, at
		}
	}
	return best
}

func offers(w Status, tier isolation.Tier, tool, digest string) bool {
	for _, o := range w.Offers {
		if o.Tool == tool && o.Tier == tier && o.Digest == digest {
			return true
		}
	}
	return false
}

// track counts a call of this gateway on worker id (delta +1 when it starts, -1 when it ends).
func (g *Gateway) track(id string, delta int) {
	if id == "" {
		return
	}
	g.healthMu.Lock()
	defer g.healthMu.Unlock()
	if g.running[id] += delta; g.running[id] <= 0 {
		delete(g.running, id)
	}
}

// traceContext is the W3C trace context a call's requests carry to the workers.
type traceContext struct{ parent, state string }

// callTrace is the trace context of ctx's span (the executor's, when tracing is on: the worker's
// spans join the caller's trace), else a fresh one (the gateway starts the trace).
func callTrace(ctx context.Context) traceContext {
	if parent, state := tracing.Inject(ctx); parent != "" {
		return traceContext{parent, state}
	}
	return traceContext{parent: traceparent()}
}

// traceparent is a fresh W3C trace context for a call.
func traceparent() string {
	var b [24]byte
	rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// Availability: a tier is available while some worker of the fleet reports it (in a view at
// most viewStale old: refreshed first when older).
func (g *Gateway) Availability(ctx context.Context, t isolation.Tier) isolation.Availability {
	for _, w := range g.freshWorkers(ctx) {
		for _, ts := range w.Tiers {
			if ts.Tier == t {
				return isolation.Availability{Available: true, Backend: "fleet"}
			}
		}
	}
	return isolation.Availability{Reason: fmt.Sprintf("no worker of the fleet runs the %s tier", t), Fix: "start `axoiso worker --nats URL` on a host that has it"}
}

// The fleet view (the workers' stats: tiers, slots, offers) is refreshed every viewEvery in the
// background while calls use it, so no call waits on a discovery round but the gateway's
// first; a call that finds it older than viewStale (the gateway was idle) uses it and has it
// refreshed at once in the background (a worker gone since is skipped when it does not answer).
const (
	viewEvery = time.Second
	viewStale = 10 * time.Second
	viewWait  = 250 * time.Millisecond
)

func (g *Gateway) workers(ctx context.Context) []Status {
	g.viewUsed.Store(time.Now().UnixNano())
	g.viewMu.Lock()
	view, at := g.view, g.viewAt
	g.viewMu.Unlock()
	if at.IsZero() {
		return g.refreshView(ctx)
	}
	if time.Since(at) >= viewStale {
		select {
		case g.kick <- struct{}{}:
		default:
		}
	}
	return view
}

// freshWorkers is the view, refreshed first when it is older than viewStale (for Availability:
// not on a call's path).
func (g *Gateway) freshWorkers(ctx context.Context) []Status {
	g.viewMu.Lock()
	view, at := g.view, g.viewAt
	g.viewMu.Unlock()
	if time.Since(at) < viewStale {
		return view
	}
	return g.refreshView(ctx)
}

func (g *Gateway) refreshView(ctx context.Context) []Status {
	g.refreshMu.Lock()
	defer g.refreshMu.Unlock()
	g.viewMu.Lock()
	view, at := g.view, g.viewAt
	g.viewMu.Unlock()
	if time.Since(at) < viewEvery/2 {
		return view // refreshed while this call waited for the lock
	}
	ws, err := Discover(ctx, g.nc, viewWait)
	if err != nil {
		g.log.Debug("discovery failed", "error", err)
	}
	g.viewMu.Lock()
	g.view, g.viewAt = ws, time.Now()
	g.viewMu.Unlock()
	return ws
}

func (g *Gateway) viewLoop() {
	defer close(g.loopDone)
	t := time.NewTicker(viewEvery)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-g.kick:
		case <-t.C:
			if time.Since(time.Unix(0, g.viewUsed.Load())) >= viewStale {
				continue
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*viewWait)
		g.refreshView(ctx)
		cancel()
	}
}
