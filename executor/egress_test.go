package executor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/executor"
)

// The call's policy is what was asked and granted, minus the deny set; what was asked and not
// granted is in the envelope and the log, never silently widened.
func TestEgressPolicyReported(t *testing.T) {
	pats := func(ss ...string) []egress.Pattern {
		ps, err := egress.ParsePatterns(ss)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	tools := map[string]string{
		"n-fast": `{"runtime":"NativeTrusted","network":{"egress":["api.github.com:443","*.pypi.org:443","10.0.0.0/8:5432","evil.test:443"]}}`,
		"n-hour": `{"runtime":"NativeTrusted"}`,
	}
	cfg := executor.Config{Egress: executor.EgressGrants{
		AllTools: pats("**.github.com:443"),
		Tools:    map[string][]egress.Pattern{"n-fast": pats("files.pypi.org:443", "10.0.0.0/8"), "n-hour": pats("**.x.com:443")},
	}}
	var logs bytes.Buffer
	e := limitsExecutor(t, cfg, tools, t.TempDir(), &logs)
	res, err := e.Execute(context.Background(), "n-fast", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	wantAllowed := []string{"api.github.com:443", "files.pypi.org:443"}
	wantNG := []egress.NotGranted{
		{Pattern: "*.pypi.org:443", Reason: "narrowed to files.pypi.org:443 (what the operator grants)"},
		{Pattern: "10.0.0.0/8:5432", Reason: "private or reserved addresses (the deny set); only the operator's allow_private reopens them"},
		{Pattern: "evil.test:443", Reason: "not granted by the operator"},
	}
	if !reflect.DeepEqual(res.Limits.Egress, wantAllowed) || !reflect.DeepEqual(res.Limits.EgressNotGranted, wantNG) {
		t.Fatalf("limits %+v", res.Limits)
	}
	b, _ := json.Marshal(res)
	for _, s := range []string{`"egress":["api.github.com:443","files.pypi.org:443"]`, `"egress_not_granted":[{"pattern":"*.pypi.org:443"`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("envelope %s lacks %s", b, s)
		}
	}
	var rec map[string]any
	if err := json.Unmarshal(logs.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["egress"] != "api.github.com:443 files.pypi.org:443" || !strings.Contains(rec["egress_not_granted"].(string), "evil.test:443 (not granted by the operator)") {
		t.Errorf("log record %v", rec)
	}

	// A tool that asks for nothing gets nothing, whatever is granted; allow_private reopens.
	tool, err := e.Tool("n-hour")
	if err != nil {
		t.Fatal(err)
	}
	if p, ng := e.Egress(tool); !p.IsZero() || ng != nil {
		t.Errorf("tool asking nothing: %v %v", p, ng)
	}
	logs.Reset()
	res, err = e.Execute(context.Background(), "n-hour", []byte(`{}`))
	if err != nil || res.Limits.Egress != nil || strings.Contains(logs.String(), "egress") {
		t.Errorf("no network: %+v %v %s", res.Limits, err, logs.String())
	}
	cfg.Egress.AllowPrivate = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}
	e = limitsExecutor(t, cfg, tools, t.TempDir(), nil)
	tool, _ = e.Tool("n-fast")
	if p, _ := e.Egress(tool); p.String() != "api.github.com:443 files.pypi.org:443 10.0.0.0/8:5432" {
		t.Errorf("with allow_private: %s", p)
	}
}
