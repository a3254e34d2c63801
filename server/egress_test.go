package server

import (
	"encoding/json"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/egress"
	"github.com/axocoatl/isolation/executor"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/native"
	"github.com/axocoatl/isolation/server/internal/testtools"
)

// TestToolsShowEffectivePolicy: /v1/tools and /v1/tools/{name} show each tool's effective
// network policy (what it asks ∩ what the operator grants − the deny set) and what it asked for
// that it does not get.
func TestToolsShowEffectivePolicy(t *testing.T) {
	root := t.TempDir()
	testtools.WriteTool(t, root, "fetch", `{"runtime":"NativeTrusted","network":{"egress":["api.example.com:443","93.184.216.34:5432/tcp","other.test:80","10.0.0.0/8:80"]}}`)
	testtools.WriteTool(t, root, "ungranted", `{"runtime":"NativeTrusted","network":{"egress":["other.test:80"]}}`)
	testtools.WriteTool(t, root, "offline", `{"runtime":"NativeTrusted"}`)
	cat, err := catalog.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	parse := func(ss ...string) []egress.Pattern {
		ps, err := egress.ParsePatterns(ss)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	e, err := executor.New(executor.Config{Catalog: cat, Sandboxes: []sandbox.Sandbox{native.New()},
		Egress: executor.EgressGrants{
			AllTools: parse("**.example.com:443", "10.0.0.0/8:80"),
			Tools:    map[string][]egress.Pattern{"fetch": parse("93.184.216.0/24:5432/tcp")},
		}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Executor: e})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(func() { ts.Close(); s.Close() })

	type view struct {
		Name             string
		Egress           []string
		EgressNotGranted []egress.NotGranted `json:"egress_not_granted"`
	}
	want := map[string]view{
		// 10.0.0.0/8 is granted to every tool but in the deny set, which only allow_private reopens.
		"fetch": {Egress: []string{"api.example.com:443", "93.184.216.34:5432/tcp"},
			EgressNotGranted: []egress.NotGranted{{Pattern: "other.test:80", Reason: "not granted by the operator"},
				{Pattern: "10.0.0.0/8:80", Reason: "private or reserved addresses (the deny set); only the operator's allow_private reopens them"}}},
		"ungranted": {EgressNotGranted: []egress.NotGranted{{Pattern: "other.test:80", Reason: "not granted by the operator"}}},
		"offline":   {},
	}
	check := func(where string, v view) {
		w := want[v.Name]
		slices.Sort(w.Egress)
		slices.Sort(v.Egress)
		sortNG := func(ng []egress.NotGranted) {
			slices.SortFunc(ng, func(a, b egress.NotGranted) int {
				if a.Pattern < b.Pattern {
					return -1
				}
				if a.Pattern > b.Pattern {
					return 1
				}
				return 0
			})
		}
		sortNG(w.EgressNotGranted)
		sortNG(v.EgressNotGranted)
		if !slices.Equal(v.Egress, w.Egress) || !slices.Equal(v.EgressNotGranted, w.EgressNotGranted) {
			t.Errorf("%s %s: egress %q, not granted %+v; want %q, %+v", where, v.Name, v.Egress, v.EgressNotGranted, w.Egress, w.EgressNotGranted)
		}
	}
	resp, body := do(t, "GET", ts.URL+"/v1/tools", "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /v1/tools: %d %s", resp.StatusCode, body)
	}
	var list struct{ Tools []view }
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, v := range list.Tools {
		if _, ok := want[v.Name]; ok {
			check("/v1/tools", v)
			seen++
		}
	}
	if seen != len(want) {
		t.Errorf("/v1/tools lists %d of the %d tools: %s", seen, len(want), body)
	}
	for name := range want {
		resp, body := do(t, "GET", ts.URL+"/v1/tools/"+name, "", nil)
		var v view
		if err := json.Unmarshal(body, &v); resp.StatusCode != 200 || err != nil {
			t.Fatalf("GET /v1/tools/%s: %d %s", name, resp.StatusCode, body)
		}
		check("/v1/tools/"+name, v)
	}
}
