package vmimage

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestStripModuleSignature(t *testing.T) {
	body := []byte("\x7fELF module body")
	signed := func(sig []byte, declared uint32) []byte {
		info := make([]byte, 12)
		info[2] = 2 // PKEY_ID_PKCS7
		binary.BigEndian.PutUint32(info[8:], declared)
		return bytes.Join([][]byte{body, sig, info, []byte(moduleSigMagic)}, nil)
	}
	sig := bytes.Repeat([]byte{0x30}, 681)
	tests := []struct {
		name string
		in   []byte
		want []byte
	}{
		{"signed", signed(sig, uint32(len(sig))), body},
		{"unsigned", body, body},
		{"length past the start", signed(sig, 1<<20), nil},
		{"zero length", signed(nil, 0), nil},
		{"magic only", []byte(moduleSigMagic), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want == nil {
				want = tt.in // malformed: left as it is
			}
			if got := stripModuleSignature(tt.in); !bytes.Equal(got, want) {
				t.Errorf("got %d bytes %q…, want %d bytes", len(got), got[:min(len(got), 16)], len(want))
			}
		})
	}
}
