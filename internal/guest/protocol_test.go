package guest

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func TestFrames(t *testing.T) {
	frame := func(typ Type, msg any) []byte {
		var b bytes.Buffer
		if err := WriteFrame(&b, typ, msg); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	ready := frame(TypeReady, Ready{Nonce: "n1"})
	badVersion := append([]byte(nil), ready...)
	badVersion[3] = Version + 1
	cases := []struct {
		name    string
		stream  []byte
		wantErr error
		skipped int
	}{
		{"clean", ready, nil, 0},
		{"noise before the magic is skipped", append([]byte("AXAX\r\nlogin: "), ready...), nil, 13},
		{"other version refused", badVersion, ErrVersion, 0},
		{"truncated frame", ready[:len(ready)-2], io.ErrUnexpectedEOF, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.stream))
			var got Ready
			err := r.Expect(TypeReady, "n1", &got)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || got.Nonce != "n1" || r.Skipped != tc.skipped {
				t.Fatalf("got %+v, skipped %d, err %v", got, r.Skipped, err)
			}
		})
	}
}

func TestExpectSkipsStaleReady(t *testing.T) {
	var b bytes.Buffer
	WriteFrame(&b, TypeReady, Ready{})
	WriteFrame(&b, TypeReady, Ready{Nonce: "old"})
	WriteFrame(&b, TypeReady, Ready{Nonce: "new"})
	var got Ready
	if err := NewReader(&b).Expect(TypeReady, "new", &got); err != nil || got.Nonce != "new" {
		t.Fatalf("got %+v, %v", got, err)
	}
}

func TestFrameLimit(t *testing.T) {
	var b bytes.Buffer
	WriteFrame(&b, TypeResponse, Response{Output: make([]byte, 4096)})
	r := NewReader(&b)
	r.Max = 1024
	if _, _, err := r.Next(); err == nil {
		t.Fatal("a frame over Max was accepted")
	}
}

func TestReadyBootSpansRoundTrip(t *testing.T) {
	var b bytes.Buffer
	want := BootSpans{AgentUS: 700000, ModulesUS: 730000, RootUS: 760000, ChannelUS: 770000}
	if err := WriteFrame(&b, TypeReady, Ready{Agent: "a", Boot: &want}); err != nil {
		t.Fatal(err)
	}
	var got Ready
	if err := NewReader(&b).Expect(TypeReady, "", &got); err != nil {
		t.Fatal(err)
	}
	if got.Boot == nil || *got.Boot != want {
		t.Fatalf("boot spans = %+v, want %+v", got.Boot, want)
	}
	// A Ready without spans (after a restore) decodes to nil spans.
	b.Reset()
	WriteFrame(&b, TypeReady, Ready{Nonce: "n"})
	got = Ready{}
	if err := NewReader(&b).Expect(TypeReady, "n", &got); err != nil || got.Boot != nil {
		t.Fatalf("got %+v, %v", got, err)
	}
}
