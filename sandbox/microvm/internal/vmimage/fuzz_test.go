package vmimage

import (
	"bytes"
	"compress/gzip"
	"testing"
)

// FuzzKernelHelpers feeds the helpers that parse a kernel image, a module and an agent binary
// (ExtractVmlinux's LZ4 and gzip payload search, stripModuleSignature's trailer, elfInterpreter's
// program headers) arbitrary bytes: no panic, ExtractVmlinux returns an ELF of bounded size or an
// error, a stripped module is a prefix of the module, an interpreter path is at most 4 KiB.
func FuzzKernelHelpers(f *testing.F) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(append([]byte("\x7fELF"), make([]byte, 64)...))
	zw.Close()
	f.Add(append([]byte("MZ bzImage header"), gz.Bytes()...))
	f.Add(append([]byte{0x02, 0x21, 0x4c, 0x18, 5, 0, 0, 0}, []byte("\x50\x7fELF\x00")...))
	f.Add([]byte("\x7fELF\x02\x01\x01"))
	f.Add(append(make([]byte, 64), []byte("\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x10~Module signature appended~\n")...))
	f.Fuzz(func(t *testing.T, b []byte) {
		if out, err := ExtractVmlinux(b); err == nil {
			if !bytes.HasPrefix(out, elfMagic) || len(out) > maxVmlinux {
				t.Fatalf("ExtractVmlinux returned %d bytes starting %q", len(out), out[:min(len(out), 4)])
			}
		}
		if s := stripModuleSignature(b); !bytes.HasPrefix(b, s) {
			t.Fatalf("stripModuleSignature returned %d bytes that are not a prefix of the module", len(s))
		}
		if p := elfInterpreter(b); len(p) > 4096 {
			t.Fatalf("elfInterpreter returned %d bytes", len(p))
		}
	})
}

// TestExtractVmlinuxIsBounded: a kernel image whose payload decompresses past maxVmlinux is
// refused; before, the whole payload was read into memory (a gzip bomb of a few MB).
func TestExtractVmlinuxIsBounded(t *testing.T) {
	defer func(old int) { maxVmlinux = old }(maxVmlinux)
	maxVmlinux = 1 << 20
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(append([]byte("\x7fELF"), make([]byte, 2<<20)...))
	zw.Close()
	out, err := ExtractVmlinux(append([]byte("bzImage"), gz.Bytes()...))
	if err == nil {
		t.Fatalf("a %d-byte gzip payload that decompresses to 2 MiB passed a 1 MiB bound (%d bytes out)", gz.Len(), len(out))
	}
	t.Log(err)
	// Under the bound it is found as before.
	maxVmlinux = 4 << 20
	if out, err := ExtractVmlinux(append([]byte("bzImage"), gz.Bytes()...)); err != nil || len(out) != 2<<20+4 {
		t.Fatalf("a payload under the bound: %d bytes, %v", len(out), err)
	}
}
