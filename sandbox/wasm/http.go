package wasm

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/axocoatl/isolation/egress"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// The http_request host function: the Wasm tier's only way out (WASI preview 1 has no sockets).
//
// ABI (module "axocoatl"):
//
//	(import "axocoatl" "http_request"
//	  (func $http_request (param $req i32) (param $req_len i32) (param $resp i32) (param $resp_cap i32)
//	                      (result i32)))
//
// The guest writes a request as JSON at [$req, $req+$req_len):
//
//	{"method": "GET", "url": "https://api.example.com/v1", "headers": {"Accept": ["application/json"]},
//	 "body": "<base64>", "timeout_ms": 5000}
//
// and gets the response as JSON at [$resp, $resp+n), where n is the result:
//
//	{"status": 200, "headers": {"Content-Type": ["…"]}, "body": "<base64>", "url": "<final URL>"}
//	{"error": "…", "kind": "denied" | "invalid" | "too_large" | "timeout" | "failed" | "limit"}
//
// A result of -1 means not even the error fits in $resp_cap bytes (give at least 4 KiB); a
// response that does not fit is replaced by an error of kind "too_large" naming the size needed.
// Package sandbox/wasm/guest/wasmhttp wraps this for Go tools.
//
// Every connection, the first and each redirect hop's, is dialed by the egress gate under the
// call's policy: a name must match a name pattern with its port and is resolved by the gate, an
// IP literal must match a CIDR pattern, and no address of the deny set is ever dialed. Only http
// and https; no proxy from the environment; a fresh transport per call, so no connection made
// under one call's policy serves another. Caps (HTTPConfig): request and response bodies, the
// number of requests and redirects per call, and each request's time (at most what is left of
// the call's timeout).

// HTTPConfig bounds the http_request host function. Zero values are the defaults.
type HTTPConfig struct {
	// MaxRequestBytes bounds a request's body (default 1 MiB); MaxResponseBytes a response's
	// (default 4 MiB, then "too_large").
	MaxRequestBytes, MaxResponseBytes int64
	// MaxRequests bounds the requests of one call (default 64); MaxRedirects the redirects
	// followed per request (default 5).
	MaxRequests, MaxRedirects int
	// Timeout bounds one request, redirects included (default 10 s, and never past the call's
	// own deadline).
	Timeout time.Duration
	// RootCAs verifies https servers (nil: the host's roots).
	RootCAs *x509.CertPool
}

func (c HTTPConfig) withDefaults() HTTPConfig {
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = 1 << 20
	}
	if c.MaxResponseBytes <= 0 {
		c.MaxResponseBytes = 4 << 20
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = 64
	}
	if c.MaxRedirects <= 0 {
		c.MaxRedirects = 5
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	return c
}

// maxRequestJSON bounds the request the guest hands over (its body is base64 in JSON).
func (c HTTPConfig) maxRequestJSON() int64 { return c.MaxRequestBytes*4/3 + 64<<10 }

// HostModule is the name of the module the tier's host functions are imported from.
const HostModule = "axocoatl"

// httpCall is one call's state for http_request.
type httpCall struct {
	cfg    HTTPConfig
	client *http.Client // nil: the call has no network
	callID string

	mu       sync.Mutex // guards requests
	requests int
}

type httpCallKey struct{}

// newHTTPCall returns the call's http_request state: a client whose every dial goes through the
// gate under the call's policy (nil client when the policy is zero).
func newHTTPCall(gate *egress.Gate, cfg HTTPConfig, p egress.Policy, callID string) *httpCall {
	hc := &httpCall{cfg: cfg, callID: callID}
	if p.IsZero() || gate == nil {
		return hc
	}
	d := gate.Dialer(p, callID)
	tr := &http.Transport{
		Proxy:                  nil, // never the host's HTTP_PROXY
		DialContext:            d.DialContext,
		TLSClientConfig:        &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    cfg.Timeout,
		ResponseHeaderTimeout:  cfg.Timeout,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConnsPerHost:    2,
		IdleConnTimeout:        30 * time.Second,
		ForceAttemptHTTP2:      true,
	}
	hc.client = &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) > cfg.MaxRedirects {
				return fmt.Errorf("more than %d redirects", cfg.MaxRedirects)
			}
			if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
				return fmt.Errorf("redirect to %q: only http and https", req.URL.Scheme)
			}
			return nil // the hop's dial is checked by the gate
		},
	}
	return hc
}

// close drops the call's idle connections.
func (hc *httpCall) close() {
	if hc != nil && hc.client != nil {
		hc.client.CloseIdleConnections()
	}
}

// instantiateHostModule adds the "axocoatl" module to rt.
func instantiateHostModule(ctx context.Context, rt wazero.Runtime) error {
	_, err := rt.NewHostModuleBuilder(HostModule).
		NewFunctionBuilder().
		WithGoModuleFunction(api.GoModuleFunc(httpRequestHost), []api.ValueType{api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32, api.ValueTypeI32}, []api.ValueType{api.ValueTypeI32}).
		WithParameterNames("req", "req_len", "resp", "resp_cap").
		WithResultNames("n").
		Export("http_request").
		Instantiate(ctx)
	return err
}

// httpRequestHost is the host function: it reads the request from guest memory, performs it and
// writes the response back. Untrusted input: every pointer and length is checked against the
// memory and the caps before anything is read or allocated.
func httpRequestHost(ctx context.Context, mod api.Module, stack []uint64) {
	reqPtr, reqLen, respPtr, respCap := api.DecodeU32(stack[0]), api.DecodeU32(stack[1]), api.DecodeU32(stack[2]), api.DecodeU32(stack[3])
	hc, _ := ctx.Value(httpCallKey{}).(*httpCall)
	var resp any
	if hc == nil {
		resp = httpError{Error: "http_request is only available during a call", Kind: "denied"}
	} else {
		resp = hc.do(ctx, mod.Memory(), reqPtr, reqLen)
	}
	stack[0] = api.EncodeI32(writeResponse(mod.Memory(), respPtr, respCap, resp))
}

type httpRequest struct {
	Method    string              `json:"method"`
	URL       string              `json:"url"`
	Headers   map[string][]string `json:"headers"`
	Body      []byte              `json:"body"`
	TimeoutMS int64               `json:"timeout_ms"`
}

type httpResponse struct {
	Status  int                 `json:"status"`
	Headers map[string][]string `json:"headers"`
	Body    []byte              `json:"body"`
	URL     string              `json:"url"`
}

type httpError struct {
	Error  string `json:"error"`
	Kind   string `json:"kind"`
	Needed int    `json:"needed,omitempty"`
}

func (hc *httpCall) do(ctx context.Context, mem api.Memory, ptr, n uint32) any {
	if mem == nil {
		return httpError{Error: "the module has no memory", Kind: "invalid"}
	}
	if int64(n) > hc.cfg.maxRequestJSON() {
		return httpError{Error: fmt.Sprintf("request of %d bytes, at most %d (body at most %d)", n, hc.cfg.maxRequestJSON(), hc.cfg.MaxRequestBytes), Kind: "too_large"}
	}
	raw, ok := mem.Read(ptr, n)
	if !ok {
		return httpError{Error: "request out of the module's memory", Kind: "invalid"}
	}
	var req httpRequest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return httpError{Error: "request: " + err.Error(), Kind: "invalid"}
	}
	if int64(len(req.Body)) > hc.cfg.MaxRequestBytes {
		return httpError{Error: fmt.Sprintf("request body of %d bytes, at most %d", len(req.Body), hc.cfg.MaxRequestBytes), Kind: "too_large"}
	}
	if req.Method == "" {
		req.Method = http.MethodGet
	}
	u, err := url.Parse(req.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return httpError{Error: fmt.Sprintf("url %q: want an absolute http or https URL", truncate(req.URL, 200)), Kind: "invalid"}
	}
	if hc.client == nil {
		return httpError{Error: "the call has no network policy (tool.json \"network\": {\"egress\": [...]} and an operator grant)", Kind: "denied"}
	}
	hc.mu.Lock()
	hc.requests++
	over := hc.requests > hc.cfg.MaxRequests
	hc.mu.Unlock()
	if over {
		return httpError{Error: fmt.Sprintf("more than %d requests in one call", hc.cfg.MaxRequests), Kind: "limit"}
	}
	timeout := hc.cfg.Timeout
	if req.TimeoutMS > 0 {
		timeout = min(timeout, time.Duration(req.TimeoutMS)*time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, req.Method, u.String(), bytes.NewReader(req.Body))
	if err != nil {
		return httpError{Error: err.Error(), Kind: "invalid"}
	}
	for k, vs := range req.Headers {
		for _, v := range vs {
			hr.Header.Add(k, v)
		}
	}
	res, err := hc.client.Do(hr)
	if err != nil {
		return classifyHTTPError(ctx, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, hc.cfg.MaxResponseBytes+1))
	if err != nil {
		return classifyHTTPError(ctx, err)
	}
	if int64(len(body)) > hc.cfg.MaxResponseBytes {
		return httpError{Error: fmt.Sprintf("response body over %d bytes", hc.cfg.MaxResponseBytes), Kind: "too_large"}
	}
	return httpResponse{Status: res.StatusCode, Headers: res.Header, Body: body, URL: res.Request.URL.String()}
}

func classifyHTTPError(ctx context.Context, err error) httpError {
	switch {
	case errors.Is(err, egress.ErrDenied):
		var de *egress.DeniedError
		if errors.As(err, &de) {
			return httpError{Error: de.Error(), Kind: "denied"}
		}
		return httpError{Error: err.Error(), Kind: "denied"}
	case ctx.Err() != nil:
		return httpError{Error: err.Error(), Kind: "timeout"}
	}
	return httpError{Error: err.Error(), Kind: "failed"}
}

// writeResponse encodes v into guest memory at [ptr, ptr+capacity) and returns its length, or
// an error of kind "too_large" when it does not fit, or -1 when nothing fits.
func writeResponse(mem api.Memory, ptr, capacity uint32, v any) int32 {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(httpError{Error: err.Error(), Kind: "failed"})
	}
	if uint64(len(b)) > uint64(capacity) {
		b, _ = json.Marshal(httpError{Error: fmt.Sprintf("the response is %d bytes; the buffer holds %d", len(b), capacity), Kind: "too_large", Needed: len(b)})
	}
	if mem == nil || uint64(len(b)) > uint64(capacity) || !mem.Write(ptr, b) {
		return -1
	}
	return int32(len(b))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return strings.Clone(s)
}
