// Package wasmhttp lets a Go tool built for the Wasm tier (GOOS=wasip1) make HTTP requests
// through the tier's http_request host function: the only way out of the sandbox, under the
// call's egress policy (tool.json "network": {"egress": [...]} and the operator's grants).
//
//	resp, err := wasmhttp.Get("https://api.example.com/v1/items")
//	if errors.Is(err, wasmhttp.ErrDenied) { ... }  // the policy does not allow it
//
// TLS is done by the host (verified against its roots); every connection, redirects included,
// is checked against the policy. Bodies are held in memory: a response over the host's cap
// (4 MiB by default) or over BufferSize is an error of kind "too_large". Outside wasip1 every
// call fails with ErrUnavailable.
package wasmhttp

import (
	"encoding/json"
	"errors"
	"fmt"
	"unsafe"
)

// Error kinds, as the host reports them.
var (
	ErrDenied      = errors.New("denied by the egress policy")
	ErrTooLarge    = errors.New("too large")
	ErrTimeout     = errors.New("timeout")
	ErrInvalid     = errors.New("invalid request")
	ErrLimit       = errors.New("request limit reached")
	ErrFailed      = errors.New("request failed")
	ErrUnavailable = errors.New("http_request is only available in the axocoatl Wasm tier")
)

// Error is a failed request; it matches one of the Err… kinds with errors.Is.
type Error struct {
	Kind    error
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is matches the kind.
func (e *Error) Is(target error) bool { return target == e.Kind }

// Request is one HTTP request.
type Request struct {
	Method    string              `json:"method,omitempty"` // default GET
	URL       string              `json:"url"`
	Headers   map[string][]string `json:"headers,omitempty"`
	Body      []byte              `json:"body,omitempty"`
	TimeoutMS int64               `json:"timeout_ms,omitempty"` // at most the host's cap
}

// Response is an HTTP response, body included.
type Response struct {
	Status  int                 `json:"status"`
	Headers map[string][]string `json:"headers"`
	Body    []byte              `json:"body"`
	// URL is the final URL, after redirects.
	URL string `json:"url"`
}

// BufferSize is the room given to the host for a response (JSON, its body in base64): enough
// for the host's default 4 MiB body cap.
var BufferSize = 6 << 20

// Do performs req.
func Do(req Request) (*Response, error) {
	in, err := json.Marshal(req)
	if err != nil {
		return nil, &Error{ErrInvalid, err.Error()}
	}
	out := make([]byte, BufferSize)
	n, err := call(in, out)
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, &Error{ErrTooLarge, fmt.Sprintf("the host's answer does not fit in %d bytes", len(out))}
	}
	var r struct {
		Response
		Error string `json:"error"`
		Kind  string `json:"kind"`
	}
	if err := json.Unmarshal(out[:n], &r); err != nil {
		return nil, &Error{ErrFailed, "host answer: " + err.Error()}
	}
	if r.Error != "" {
		kind := map[string]error{"denied": ErrDenied, "too_large": ErrTooLarge, "timeout": ErrTimeout,
			"invalid": ErrInvalid, "limit": ErrLimit}[r.Kind]
		if kind == nil {
			kind = ErrFailed
		}
		return nil, &Error{kind, r.Error}
	}
	return &r.Response, nil
}

// Get fetches url.
func Get(url string) (*Response, error) { return Do(Request{URL: url}) }

// call hands in to the host and returns the length it wrote into out (-1: it did not fit).
func call(in, out []byte) (int, error) {
	var inp, outp unsafe.Pointer
	if len(in) > 0 {
		inp = unsafe.Pointer(&in[0])
	}
	if len(out) > 0 {
		outp = unsafe.Pointer(&out[0])
	}
	return httpRequest(inp, uint32(len(in)), outp, uint32(len(out)))
}
