package guest

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzReader feeds the frame reader what a guest (which runs the tool's code) may write on its
// channel: no input panics, no frame is larger than the limit, the reader never reads past what
// it was given, and the typed decoders (Expect of a Response, a Ready with a nonce) take any
// frame without panicking. A valid frame embedded in noise is found whole.
func FuzzReader(f *testing.F) {
	var valid bytes.Buffer
	_ = WriteFrame(&valid, TypeResponse, Response{ExitCode: 3, Stderr: "x"})
	f.Add(valid.Bytes(), uint16(0))
	f.Add(append([]byte("noise\x00"), valid.Bytes()...), uint16(0))
	f.Add(valid.Bytes()[:len(valid.Bytes())-2], uint16(0))       // truncated
	f.Add(append([]byte(nil), valid.Bytes()[:8]...), uint16(16)) // header only, small limit
	var ready bytes.Buffer
	_ = WriteFrame(&ready, TypeReady, Ready{Nonce: "n1"})
	f.Add(append(ready.Bytes(), valid.Bytes()...), uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		r := NewReader(bytes.NewReader(data))
		r.Max = int(limit)
		max := r.Max
		if max <= 0 {
			max = MaxFrame
		}
		total := 0
		for range 1 << 12 {
			_, body, err := r.Next()
			if err != nil {
				break
			}
			if len(body) > max {
				t.Fatalf("a frame of %d bytes passed the %d-byte limit", len(body), max)
			}
			total += len(body) + 8
		}
		if total+r.Skipped > len(data) {
			t.Fatalf("frames (%d bytes) and skipped noise (%d) exceed the input (%d)", total, r.Skipped, len(data))
		}
		var resp Response
		_ = NewReader(bytes.NewReader(data)).Expect(TypeResponse, "", &resp)
		var rd Ready
		_ = NewReader(bytes.NewReader(data)).Expect(TypeReady, "n1", &rd)

		// Whatever the noise, a valid frame after it is read back whole.
		body, _ := json.Marshal(Response{ExitCode: 7, Stdout: string(limitBytes(data, 64))})
		var stream bytes.Buffer
		stream.Write(bytes.ReplaceAll(data, magic[:1], []byte{0})) // noise in which no magic can begin
		_ = WriteFrame(&stream, TypeResponse, json.RawMessage(body))
		typ, got, err := NewReader(&stream).Next()
		if err != nil || typ != TypeResponse || !bytes.Equal(got, body) {
			t.Fatalf("a valid frame after %d bytes of noise: %c %q %v", len(data), typ, got, err)
		}
	})
}

func limitBytes(b []byte, n int) []byte { return b[:min(len(b), n)] }
