package fleet

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/axocoatl/isolation"
)

// Metrics are a gateway's routed-call metrics (Prometheus). A nil *Metrics records nothing.
type Metrics struct {
	phases    *prometheus.HistogramVec
	calls     *prometheus.CounterVec
	fallbacks *prometheus.CounterVec
	busy      prometheus.Counter
	noAcc     prometheus.Counter
	lost      prometheus.Counter
}

// NewMetrics makes the metrics; *Metrics is a prometheus.Collector (register it, or pass it in
// server.Config.Collectors).
func NewMetrics() *Metrics {
	m := &Metrics{
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "axoiso_fleet_call_phase_seconds",
			Help:    "Routed calls by phase: accept (request sent → a worker accepted), run (sent → answer), total (the gateway's whole routing, fallbacks and retries included).",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"phase"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "axoiso_fleet_calls_total",
			Help: "Routed calls by outcome kind."}, []string{"outcome"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "axoiso_fleet_fallbacks_total",
			Help: "Routed calls that ran in another tier than the first one tried, by from, to and reason."}, []string{"from", "to", "reason"}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{Name: "axoiso_fleet_busy_answers_total",
			Help: "Busy answers from workers (each makes the gateway ask another; a call gets busy after MaxAttempts)."}),
		noAcc: prometheus.NewCounter(prometheus.CounterOpts{Name: "axoiso_fleet_accept_timeouts_total",
			Help: "Attempts no worker accepted within the accept window (cancelled, asked again)."}),
		lost: prometheus.NewCounter(prometheus.CounterOpts{Name: "axoiso_fleet_worker_lost_total",
			Help: "Attempts whose worker went silent after accepting."}),
	}
	return m
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.phases, m.calls, m.fallbacks, m.busy, m.noAcc, m.lost}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *Metrics) phase(name string, d time.Duration) {
	if m != nil {
		m.phases.WithLabelValues(name).Observe(d.Seconds())
	}
}

func (m *Metrics) outcome(err error, start time.Time) {
	if m == nil {
		return
	}
	m.phases.WithLabelValues("total").Observe(time.Since(start).Seconds())
	k := isolation.KindName(err)
	if errors.Is(err, isolation.ErrWorkerLost) {
		k = "worker_lost"
	}
	m.calls.WithLabelValues(k).Inc()
}

func (m *Metrics) fallback(from, to isolation.Tier, reason string) {
	if m != nil {
		m.fallbacks.WithLabelValues(from.String(), to.String(), reason).Inc()
	}
}

func (m *Metrics) busyAnswer() {
	if m != nil {
		m.busy.Inc()
	}
}

func (m *Metrics) noAccept() {
	if m != nil {
		m.noAcc.Inc()
	}
}

func (m *Metrics) workerLost() {
	if m != nil {
		m.lost.Inc()
	}
}
