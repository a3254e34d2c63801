package metrics

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/executor"
)

func TestObserveCall(t *testing.T) {
	m := New(nil)
	m.ObserveCall("hello", &executor.Result{Tier: isolation.TierOCI, Ideal: isolation.TierMicroVM, Degraded: true}, nil, time.Millisecond)
	m.ObserveCall("Bad Name", nil, &isolation.Error{Kind: isolation.ErrInvalidToolName}, 0)
	m.ObserveCall("hello", nil, &isolation.Error{Kind: isolation.ErrMemoryLimit, Tier: isolation.TierWasm, HasTier: true}, time.Second)
	done := m.Start()
	m.Request("POST /v1/tools/{name}/execute", 504)
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	body := scrape()
	for _, want := range []string{
		`axoiso_calls_total{outcome="invalid_tool_name",tier="",tool="_unknown"} 1`,
		`axoiso_calls_total{outcome="memory_limit",tier="Wasmtime",tool="hello"} 1`,
		`axoiso_calls_total{outcome="ok",tier="Oci",tool="hello"} 1`,
		`axoiso_downgrades_total{ideal="Firecracker",tier="Oci",tool="hello"} 1`,
		`axoiso_call_duration_seconds_bucket{outcome="memory_limit",tier="Wasmtime",tool="hello",le="1"} 1`,
		`axoiso_calls_in_flight 1`,
		`axoiso_http_requests_total{code="504",route="POST /v1/tools/{name}/execute"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s\n%s", want, body)
		}
	}
	if strings.Contains(body, "Bad Name") {
		t.Error("an invalid tool name became a label")
	}
	done()
	if !strings.Contains(scrape(), "axoiso_calls_in_flight 0") {
		t.Error("in flight not back to 0 after done")
	}
	// A nil *Metrics records nothing and does not panic.
	var nilM *Metrics
	nilM.ObserveCall("x", nil, nil, 0)
	nilM.Start()()
	nilM.Rejected("global_limit")
	nilM.Request("x", 200)
}
