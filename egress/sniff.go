package egress

import (
	"bytes"
	"errors"
	"strings"
)

// What a connection's first bytes say about where it wants to go. Untrusted bytes: every
// length is checked against what is there, nothing recurses, and the input is bounded by the
// caller (maxSniff).

// maxSniff bounds what the proxy reads before deciding: a TLS ClientHello (post-quantum key
// shares make them ~1.8 KiB, a record holds at most 16 KiB) or an HTTP/1 request head.
const maxSniff = 16 << 10

var (
	// errNeedMore: the bytes so far are a valid prefix; read more.
	errNeedMore = errors.New("need more bytes")
	errNoName   = errors.New("no server name")
)

// sniffName returns the server name of a TLS ClientHello or an HTTP/1 request head in b, and
// whether b is TLS. errNeedMore asks for more bytes; any other error is final.
func sniffName(b []byte) (name string, isTLS bool, err error) {
	if len(b) == 0 {
		return "", false, errNeedMore
	}
	if b[0] == 0x16 { // TLS handshake record
		name, err := clientHelloSNI(b)
		return name, true, err
	}
	name, err = httpHost(b)
	return name, false, err
}

// clientHelloSNI returns the server_name of the ClientHello that starts b, which may span
// several TLS records.
func clientHelloSNI(b []byte) (string, error) {
	// Reassemble the handshake message from records of type 22.
	var hs []byte
	for {
		if len(b) < 5 {
			return "", errNeedMore
		}
		if b[0] != 0x16 {
			return "", errors.New("TLS: not a handshake record")
		}
		if b[1] != 3 {
			return "", errors.New("TLS: bad record version")
		}
		n := int(b[3])<<8 | int(b[4])
		if n == 0 || n > 1<<14+256 {
			return "", errors.New("TLS: bad record length")
		}
		if len(b) < 5+n {
			return "", errNeedMore
		}
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
		if len(hs) >= 4 {
			if hs[0] != 1 {
				return "", errors.New("TLS: first handshake message is not a ClientHello")
			}
			mlen := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
			if mlen > maxSniff {
				return "", errors.New("TLS: ClientHello too large")
			}
			if len(hs) >= 4+mlen {
				return parseClientHello(hs[4 : 4+mlen])
			}
		}
	}
}

// parseClientHello finds the host_name entry of the server_name extension (RFC 6066).
func parseClientHello(m []byte) (string, error) {
	s := cursor(m)
	if !s.skip(2 + 32) { // legacy_version, random
		return "", errBadHello
	}
	if !s.skipVec8() || !s.skipVec16() || !s.skipVec8() { // session id, cipher suites, compression
		return "", errBadHello
	}
	if s.empty() {
		return "", errNoName // no extensions
	}
	exts, ok := s.vec16()
	if !ok || !s.empty() {
		return "", errBadHello
	}
	name := ""
	seen := false
	for !exts.empty() {
		typ, ok1 := exts.u16()
		body, ok2 := exts.vec16()
		if !ok1 || !ok2 {
			return "", errBadHello
		}
		if typ != 0 { // server_name
			continue
		}
		if seen {
			return "", errors.New("TLS: two server_name extensions")
		}
		seen = true
		list, ok := body.vec16()
		if !ok || !body.empty() {
			return "", errBadHello
		}
		for !list.empty() {
			kind, ok1 := list.u8()
			host, ok2 := list.vec16()
			if !ok1 || !ok2 {
				return "", errBadHello
			}
			if kind != 0 { // host_name
				continue
			}
			if name != "" {
				return "", errors.New("TLS: two host names in server_name")
			}
			name = string(host)
			if name == "" {
				return "", errBadHello
			}
		}
	}
	if name == "" {
		return "", errNoName
	}
	return name, nil
}

var errBadHello = errors.New("TLS: malformed ClientHello")

// cursor reads big-endian TLS structures, refusing anything past its end.
type cursor []byte

func (c *cursor) empty() bool { return len(*c) == 0 }

func (c *cursor) skip(n int) bool {
	if len(*c) < n {
		return false
	}
	*c = (*c)[n:]
	return true
}

func (c *cursor) u8() (byte, bool) {
	if len(*c) < 1 {
		return 0, false
	}
	v := (*c)[0]
	*c = (*c)[1:]
	return v, true
}

func (c *cursor) u16() (int, bool) {
	if len(*c) < 2 {
		return 0, false
	}
	v := int((*c)[0])<<8 | int((*c)[1])
	*c = (*c)[2:]
	return v, true
}

func (c *cursor) vec16() (cursor, bool) {
	n, ok := c.u16()
	if !ok || len(*c) < n {
		return nil, false
	}
	v := (*c)[:n]
	*c = (*c)[n:]
	return v, true
}

func (c *cursor) skipVec8() bool {
	n, ok := c.u8()
	return ok && c.skip(int(n))
}

func (c *cursor) skipVec16() bool {
	_, ok := c.vec16()
	return ok
}

// httpHost returns the Host header of the HTTP/1 request head that starts b (without its port).
// The request line must look like HTTP/1.x; exactly one Host header is required (HTTP/1.0
// requests without one are refused: there is no name to check).
func httpHost(b []byte) (string, error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		if len(b) >= maxSniff {
			return "", errors.New("HTTP: request head too large")
		}
		// Fail early on bytes that cannot start a request line.
		for _, c := range b[:min(len(b), 16)] {
			if c < 0x20 && c != '\r' && c != '\n' || c >= 0x7f {
				return "", errors.New("neither TLS nor HTTP/1")
			}
		}
		return "", errNeedMore
	}
	lines := strings.Split(string(b[:end]), "\r\n")
	req := strings.Split(lines[0], " ")
	if len(req) != 3 || !strings.HasPrefix(req[2], "HTTP/1.") || req[0] == "" || req[0] == "CONNECT" {
		return "", errors.New("HTTP: not an HTTP/1 request line (CONNECT is not supported: connect directly)")
	}
	host := ""
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ":")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return "", errors.New("HTTP: malformed header line")
		}
		if strings.EqualFold(k, "host") {
			if host != "" {
				return "", errors.New("HTTP: two Host headers")
			}
			host = strings.TrimSpace(v)
			if host == "" {
				return "", errors.New("HTTP: empty Host header")
			}
		}
	}
	if host == "" {
		return "", errNoName
	}
	// Strip a port; a bracketed IPv6 literal stays an IP literal (never matches a name).
	if h, _, ok := strings.Cut(host, ":"); ok && !strings.HasPrefix(host, "[") {
		host = h
	}
	if host == "" {
		return "", errors.New("HTTP: Host header without a host")
	}
	return host, nil
}
