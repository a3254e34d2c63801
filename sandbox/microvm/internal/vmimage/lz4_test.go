package vmimage

import (
	"bytes"
	"testing"
)

func TestLZ4Block(t *testing.T) {
	cases := []struct {
		name string
		src  []byte
		want string
		bad  bool
	}{
		{"literals only", append([]byte{0x50}, "hello"...), "hello", false},
		{"overlapping match", []byte{0x14, 'a', 1, 0, 0x10, 'b'}, "aaaaaaaaab", false},
		{"offset before start", []byte{0x14, 'a', 9, 0, 0x10, 'b'}, "", true},
		{"truncated literals", []byte{0x50, 'h'}, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := lz4Block(nil, tc.src)
			if tc.bad {
				if err == nil {
					t.Fatalf("decoded corrupt block to %q", got)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestExtractVmlinux(t *testing.T) {
	elf := append(append([]byte(nil), elfMagic...), "rest-of-kernel"...)
	// A bzImage-like blob: setup code, then an LZ4 legacy stream whose block is the ELF.
	block := append([]byte{byte(len(elf)) << 4}, elf...)
	if len(elf) >= 15 {
		block = append([]byte{0xf0, byte(len(elf) - 15)}, elf...)
	}
	blob := append([]byte("setup-code"), lz4LegacyMagic...)
	blob = append(blob, byte(len(block)), 0, 0, 0)
	blob = append(blob, block...)
	blob = append(blob, 0xde, 0xad) // trailer
	got, err := ExtractVmlinux(blob)
	if err != nil || !bytes.Equal(got, elf) {
		t.Fatalf("got %q, %v", got, err)
	}
	if got, err := ExtractVmlinux(elf); err != nil || !bytes.Equal(got, elf) {
		t.Fatalf("an ELF must pass through: %q, %v", got, err)
	}
	if _, err := ExtractVmlinux([]byte("not a kernel")); err == nil {
		t.Fatal("garbage accepted as a kernel")
	}
}
