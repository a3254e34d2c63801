package server

import (
	"encoding/json"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// TestOpenAPIStructure checks the document a running server serves as client generators read it:
// every $ref resolves, every object schema says what its properties are (a bare {type: object}
// becomes Record<string, never> in TypeScript), every response has one schema, servers are not
// hard-coded to an address, and the GET routes answer with a documented status and content type.
func TestOpenAPIStructure(t *testing.T) {
	_, _, ts := newTestServer(t, Config{})
	resp, body := do(t, "GET", ts.URL+"/openapi.json", "", nil)
	if resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	for _, s := range doc["servers"].([]any) {
		if u := s.(map[string]any)["url"].(string); strings.Contains(u, "://") {
			t.Errorf("servers hard-codes %q: clients should use the address they fetched the document from", u)
		}
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				if resolve(doc, ref) == nil {
					t.Errorf("%s: $ref %s does not resolve", path, ref)
				}
			}
			if x["type"] == "object" && x["properties"] == nil && x["additionalProperties"] == nil {
				t.Errorf("%s: an object schema without properties or additionalProperties", path)
			}
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				walk(path+"/"+k, x[k])
			}
		case []any:
			for i, e := range x {
				walk(path+"/"+strconv.Itoa(i), e)
			}
		}
	}
	walk("#", doc)

	paths := doc["paths"].(map[string]any)
	for p, ops := range paths {
		for method, op := range ops.(map[string]any) {
			for code, r := range op.(map[string]any)["responses"].(map[string]any) {
				rm := r.(map[string]any)
				if ref, ok := rm["$ref"].(string); ok {
					rm = resolve(doc, ref).(map[string]any)
				}
				if p == "/mcp" && code == "200" {
					continue // JSON or an event stream of the same messages: the transport's choice
				}
				if c, ok := rm["content"].(map[string]any); ok && len(c) > 1 {
					t.Errorf("%s %s %s: %d media types; a generated client gets their union", method, p, code, len(c))
				}
			}
		}
	}

	// The GET routes without parameters, against the server: a documented status, the
	// documented content type.
	for p, ops := range paths {
		op, ok := ops.(map[string]any)["get"].(map[string]any)
		if !ok || strings.Contains(p, "{") || p == "/mcp" {
			continue
		}
		resp, _ := do(t, "GET", ts.URL+p, "", nil)
		r, ok := op["responses"].(map[string]any)[strconv.Itoa(resp.StatusCode)].(map[string]any)
		if !ok {
			t.Errorf("GET %s: status %d is not documented", p, resp.StatusCode)
			continue
		}
		mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		if c, ok := r["content"].(map[string]any); ok && c[mt] == nil {
			t.Errorf("GET %s: Content-Type %s is not among the documented %v", p, mt, keysOf(c))
		}
	}
	// The two execute operations, against the server.
	for _, c := range []struct{ path, want string }{{"/v1/tools/echo/execute", "application/json"}, {"/v1/tools/echo/call", "application/json"}} {
		resp, _ := do(t, "POST", ts.URL+c.path, `{"x":1}`, nil)
		post := paths[strings.Replace(c.path, "echo", "{name}", 1)].(map[string]any)["post"].(map[string]any)
		content := post["responses"].(map[string]any)["200"].(map[string]any)["content"].(map[string]any)
		if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK || content[mt] == nil {
			t.Errorf("POST %s: %d %s, documented %v", c.path, resp.StatusCode, mt, keysOf(content))
		}
	}
}

func resolve(doc map[string]any, ref string) any {
	if !strings.HasPrefix(ref, "#/") {
		return nil
	}
	var cur any = doc
	for _, part := range strings.Split(ref[2:], "/") {
		part = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

func keysOf(m map[string]any) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
