package server

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestResponsesAreUTF8: bytes a tool wrote that are not UTF-8 (json.Valid accepts them inside
// strings) never reach a JSON response raw: bare output, envelope, error stderr, MCP results.
func TestResponsesAreUTF8(t *testing.T) {
	_, _, ts := newTestServer(t, Config{})
	for _, c := range []struct{ name, path, want string }{
		{"bare output", "/v1/tools/badutf8/execute", "a\uFFFDb\uFFFDc"},
		{"envelope", "/v1/tools/badutf8/execute?envelope=1", "a\uFFFDb\uFFFDc"},
		{"stderr", "/v1/tools/badutf8-fail/execute", "stray \uFFFD"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, body := do(t, "POST", ts.URL+c.path, `{}`, nil)
			if !utf8.Valid(body) || !json.Valid(body) {
				t.Fatalf("response is not UTF-8 JSON: %q", body)
			}
			var v any
			json.Unmarshal(body, &v)
			norm, _ := json.Marshal(v) // escapes decoded, U+FFFD written as itself
			if !bytes.Contains(norm, []byte(c.want)) {
				t.Errorf("response %q lacks %q", body, c.want)
			}
		})
	}
	t.Run("mcp", func(t *testing.T) {
		post := func(session, body string) (*http.Response, []byte) {
			req, _ := http.NewRequest("POST", ts.URL+"/mcp", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			if session != "" {
				req.Header.Set("Mcp-Session-Id", session)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp, b
		}
		resp, _ := post("", mcpInitialize)
		sid := resp.Header.Get("Mcp-Session-Id")
		post(sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
		_, body := post(sid, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"badutf8","arguments":{}}}`)
		if !utf8.Valid(body) || !bytes.Contains(body, []byte("a\uFFFDb")) || !bytes.Contains(body, []byte(`"structuredContent"`)) {
			t.Errorf("MCP result is not UTF-8 or lacks the replaced output: %q", body)
		}
	})
}

// TestInputTooDeep: input nested past the catalog's depth limit is invalid_input whose message
// says "too deep", not "not valid JSON", whatever the tool's schema.
func TestInputTooDeep(t *testing.T) {
	_, _, ts := newTestServer(t, Config{})
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	for _, tool := range []string{"echo", "list"} {
		resp, body := do(t, "POST", ts.URL+"/v1/tools/"+tool+"/execute", deep, nil)
		var e errorDoc
		json.Unmarshal(body, &e)
		if resp.StatusCode != 400 || e.Error.Kind != "invalid_input" || !strings.Contains(e.Error.Message, "too deep") {
			t.Errorf("%s: %d %s", tool, resp.StatusCode, body)
		}
	}
}
