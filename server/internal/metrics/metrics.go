// Package metrics holds the service's Prometheus metrics, on a registry of its own: calls by
// tool, tier and outcome, call latency, downgrades, in-flight calls, rejections, HTTP requests, and
// the state of every tier's warm pools and availability, read at scrape time.
package metrics

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
)

// Namespace prefixes every metric name.
const Namespace = "axoiso"

// UnknownTool is the tool label of calls whose name was invalid or named no tool: labels never
// carry an unvalidated, unbounded name.
const UnknownTool = "_unknown"

// Metrics records calls. A nil *Metrics records nothing, so callers need no checks. Safe for
// concurrent use.
type Metrics struct {
	reg       *prometheus.Registry
	calls     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	downgrade *prometheus.CounterVec
	inFlight  prometheus.Gauge
	rejected  *prometheus.CounterVec
	requests  *prometheus.CounterVec
}

// New returns metrics registered on a new registry, with Go and process collectors and a
// collector that reads exec's pools (sandbox.Pooler) and tier availability at scrape time. exec
// may be nil (no pool or tier metrics).
func New(exec *executor.Executor) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "calls_total",
			Help: "Tool calls by tool, tier that ran them (empty when none was chosen) and outcome (the kind of isolation.OutcomeOf: ok, an error class, canceled or internal).",
		}, []string{"tool", "tier", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "call_duration_seconds",
			Help:    "Duration of tool calls as the executor saw them, by tool, tier and outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"tool", "tier", "outcome"}),
		downgrade: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "downgrades_total",
			Help: "Successful calls that ran in a weaker tier than the tool's ideal one.",
		}, []string{"tool", "ideal", "tier"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "calls_in_flight",
			Help: "Tool calls executing now.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "calls_rejected_total",
			Help: "Calls refused before running: reason is global_limit or tool_limit.",
		}, []string{"reason"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "http_requests_total",
			Help: "HTTP requests by route pattern and status code.",
		}, []string{"route", "code"}),
	}
	m.reg.MustRegister(m.calls, m.latency, m.downgrade, m.inFlight, m.rejected, m.requests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if exec != nil {
		m.reg.MustRegister(&tierCollector{exec: exec})
	}
	return m
}

// Registry is the registry every metric is on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Start counts a call as in flight; the returned func ends it and must be called once.
func (m *Metrics) Start() (done func()) {
	if m == nil {
		return func() {}
	}
	m.inFlight.Inc()
	return m.inFlight.Dec
}

// ObserveCall records one finished call: res on success, err otherwise. tool is the name asked for;
// it becomes the label only when the call got past name validation and lookup.
func (m *Metrics) ObserveCall(tool string, res *executor.Result, err error, d time.Duration) {
	if m == nil {
		return
	}
	tier, outcome := "", isolation.KindOK
	if err != nil {
		outcome = isolation.KindName(err)
		if errors.Is(err, isolation.ErrInvalidToolName) || errors.Is(err, isolation.ErrToolNotFound) {
			tool = UnknownTool
		}
		var ie *isolation.Error
		if errors.As(err, &ie) && ie.HasTier {
			tier = ie.Tier.String()
		}
	} else if res != nil {
		tier = res.Tier.String()
		if res.Degraded {
			m.downgrade.WithLabelValues(tool, res.Ideal.String(), tier).Inc()
		}
	}
	m.calls.WithLabelValues(tool, tier, outcome).Inc()
	m.latency.WithLabelValues(tool, tier, outcome).Observe(d.Seconds())
}

// Rejected counts a call refused by a concurrency limit ("global_limit" or "tool_limit").
func (m *Metrics) Rejected(reason string) {
	if m == nil {
		return
	}
	m.rejected.WithLabelValues(reason).Inc()
}

// Request counts one HTTP request by route pattern (never the raw path) and status code.
func (m *Metrics) Request(route string, code int) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(route, statusText(code)).Inc()
}

func statusText(code int) string {
	// Small fixed set: avoids strconv on the hot path and bounds cardinality.
	if code >= 100 && code < 600 {
		return codes[code/100][code%100/10][code%10]
	}
	return "other"
}

var codes = func() (c [6][10][10]string) {
	for i := 1; i < 6; i++ {
		for j := 0; j < 10; j++ {
			for k := 0; k < 10; k++ {
				c[i][j][k] = string([]byte{byte('0' + i), byte('0' + j), byte('0' + k)})
			}
		}
	}
	return c
}()

// tierCollector reads tier availability and pool sizes when scraped, so they are never stale.
type tierCollector struct {
	exec *executor.Executor
}

var (
	poolReadyDesc = prometheus.NewDesc(Namespace+"_pool_ready", "Warm items ready in a tier's pool for a tool.", []string{"tier", "tool"}, nil)
	poolSizeDesc  = prometheus.NewDesc(Namespace+"_pool_size", "Target size of a tier's warm pool for a tool.", []string{"tier", "tool"}, nil)
	poolRSSDesc   = prometheus.NewDesc(Namespace+"_pool_idle_rss_bytes", "Mean resident set of an idle pooled item (a pooled VM's VMM), where the tier reports it.", []string{"tier", "tool"}, nil)
	tierUpDesc    = prometheus.NewDesc(Namespace+"_tier_available", "1 when the tier can run on this host, else 0.", []string{"tier", "backend"}, nil)
)

func (c *tierCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolReadyDesc
	ch <- poolSizeDesc
	ch <- poolRSSDesc
	ch <- tierUpDesc
}

func (c *tierCollector) Collect(ch chan<- prometheus.Metric) {
	// Probes are cached by the executor after the first; bound the first one anyway.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, t := range isolation.Tiers() {
		a := c.exec.Availability(ctx, t)
		up := 0.0
		if a.Available {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(tierUpDesc, prometheus.GaugeValue, up, t.String(), a.Backend)
		sb, ok := c.exec.Sandbox(t)
		if !ok {
			continue
		}
		p, ok := sb.(sandbox.Pooler)
		if !ok {
			continue
		}
		seen := map[string]bool{}
		for _, s := range p.PoolStats() {
			if seen[s.Tool] {
				continue // duplicate label sets would fail the whole scrape
			}
			seen[s.Tool] = true
			ch <- prometheus.MustNewConstMetric(poolReadyDesc, prometheus.GaugeValue, float64(s.Ready), t.String(), s.Tool)
			ch <- prometheus.MustNewConstMetric(poolSizeDesc, prometheus.GaugeValue, float64(s.Size), t.String(), s.Tool)
			if s.IdleRSSBytes > 0 {
				ch <- prometheus.MustNewConstMetric(poolRSSDesc, prometheus.GaugeValue, float64(s.IdleRSSBytes), t.String(), s.Tool)
			}
		}
	}
}
