// Command netprobe is the tool the network tests run inside a sandbox: it reads a list of network
// operations from /axocoatl/input.json, tries each, and writes what happened to
// /axocoatl/output.json. Static (CGO_ENABLED=0), so it runs on any root filesystem; Go's own
// resolver reads /etc/resolv.conf.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Op is one operation.
type Op struct {
	Op   string `json:"op"`             // http, tls, tcp, udp, dns, dnsat, sleep
	URL  string `json:"url,omitempty"`  // http: the URL (redirects followed)
	Addr string `json:"addr,omitempty"` // tls, tcp, udp, dnsat: host:port
	SNI  string `json:"sni,omitempty"`  // tls: the server name sent
	Host string `json:"host,omitempty"` // tcp: an HTTP/1 request with this Host header
	Name string `json:"name,omitempty"` // dns, dnsat: the name to look up
	Type string `json:"type,omitempty"` // dns: A (default) or TXT
	CA   string `json:"ca,omitempty"`   // http, tls: a PEM CA to trust
	MS   int    `json:"ms,omitempty"`   // sleep: how long
}

// Result is what one operation did.
type Result struct {
	OK    bool     `json:"ok"`
	Err   string   `json:"err,omitempty"`
	Body  string   `json:"body,omitempty"`
	Addrs []string `json:"addrs,omitempty"`
	MS    int64    `json:"ms"`
}

func main() {
	in := os.Getenv("NETPROBE_INPUT")
	if in == "" {
		in = "/axocoatl/input.json"
	}
	out := os.Getenv("NETPROBE_OUTPUT")
	if out == "" {
		out = "/axocoatl/output.json"
	}
	b, err := os.ReadFile(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var req struct {
		Ops []Op `json:"ops"`
	}
	if err := json.Unmarshal(b, &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	res := make([]Result, len(req.Ops))
	for i, op := range req.Ops {
		start := time.Now()
		body, addrs, err := run(op)
		res[i] = Result{OK: err == nil, Body: body, Addrs: addrs, MS: time.Since(start).Milliseconds()}
		if err != nil {
			res[i].Err = err.Error()
		}
	}
	b, _ = json.Marshal(map[string]any{"results": res})
	if err := os.WriteFile(out, b, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

const timeout = 4 * time.Second

func run(op Op) (string, []string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var d net.Dialer
	switch op.Op {
	case "http":
		tr := &http.Transport{DialContext: d.DialContext, TLSClientConfig: tlsConfig(op.CA, "")}
		c := &http.Client{Transport: tr, Timeout: timeout}
		resp, err := c.Get(op.URL)
		if err != nil {
			return "", nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if resp.StatusCode != 200 {
			return string(b), nil, fmt.Errorf("status %d", resp.StatusCode)
		}
		return string(b), nil, nil
	case "tls":
		c, err := (&tls.Dialer{NetDialer: &d, Config: tlsConfig(op.CA, op.SNI)}).DialContext(ctx, "tcp", op.Addr)
		if err != nil {
			return "", nil, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", op.SNI)
		b, _ := io.ReadAll(io.LimitReader(c, 4096))
		return string(b), nil, nil
	case "tcp":
		c, err := d.DialContext(ctx, "tcp", op.Addr)
		if err != nil {
			return "", nil, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if op.Host != "" {
			fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", op.Host)
		}
		b, err := io.ReadAll(io.LimitReader(c, 4096))
		if len(b) == 0 {
			if err == nil {
				err = errors.New("closed without a byte")
			}
			return "", nil, err
		}
		return string(b), nil, nil
	case "udp":
		c, err := d.DialContext(ctx, "udp", op.Addr)
		if err != nil {
			return "", nil, err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("probe")); err != nil {
			return "", nil, err
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return "", nil, err
		}
		return string(buf[:n]), nil, nil
	case "sleep":
		time.Sleep(time.Duration(op.MS) * time.Millisecond)
		return "", nil, nil
	case "dns", "dnsat":
		r := &net.Resolver{PreferGo: true}
		if op.Op == "dnsat" {
			r.Dial = func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, op.Addr)
			}
		}
		if strings.EqualFold(op.Type, "TXT") {
			txt, err := r.LookupTXT(ctx, op.Name)
			return "", txt, err
		}
		as, err := r.LookupHost(ctx, op.Name)
		return "", as, err
	}
	return "", nil, fmt.Errorf("unknown op %q", op.Op)
}

func tlsConfig(caPEM, sni string) *tls.Config {
	c := &tls.Config{ServerName: sni}
	if caPEM != "" {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(caPEM))
		c.RootCAs = pool
	}
	return c
}
