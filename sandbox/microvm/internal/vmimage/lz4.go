package vmimage

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

var (
	elfMagic       = []byte{0x7f, 'E', 'L', 'F'}
	lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}
	gzipMagic      = []byte{0x1f, 0x8b, 0x08}
)

const lz4LegacyBlock = 8 << 20

// maxVmlinux bounds an uncompressed kernel (Debian's is ~60 MB): a payload that decompresses past
// it is refused instead of filling memory (a few MB of gzip or LZ4 can expand ~1000× or ~255×).
var maxVmlinux = 256 << 20 // a variable for the tests

// ExtractVmlinux returns the uncompressed ELF kernel inside a bzImage (what scripts/extract-vmlinux
// does), or the input itself when it already is an ELF. It knows the LZ4 (Debian's choice) and
// gzip payloads.
func ExtractVmlinux(img []byte) ([]byte, error) {
	if bytes.HasPrefix(img, elfMagic) {
		return img, nil
	}
	for off := 0; ; {
		i := bytes.Index(img[off:], lz4LegacyMagic)
		if i < 0 {
			break
		}
		off += i
		if out, err := lz4Legacy(img[off+4:]); err == nil && bytes.HasPrefix(out, elfMagic) {
			return out, nil
		}
		off++
	}
	for off := 0; ; {
		i := bytes.Index(img[off:], gzipMagic)
		if i < 0 {
			break
		}
		off += i
		if zr, err := gzip.NewReader(bytes.NewReader(img[off:])); err == nil {
			zr.Multistream(false)
			out, err := io.ReadAll(io.LimitReader(zr, int64(maxVmlinux)+1))
			if len(out) > maxVmlinux {
				return nil, fmt.Errorf("the kernel image's gzip payload decompresses past %d MiB", maxVmlinux>>20)
			}
			if (err == nil || len(out) > 1<<20) && bytes.HasPrefix(out, elfMagic) {
				return out, nil
			}
		}
		off++
	}
	return nil, errors.New("no LZ4 or gzip ELF payload found in the kernel image (give an uncompressed vmlinux)")
}

// lz4Legacy decodes the LZ4 legacy frame format the kernel build uses: blocks of a 4-byte
// little-endian compressed size and a block that decompresses to at most 8 MiB. The stream ends at
// the first block shorter than 8 MiB (what follows is the kernel's own trailer).
func lz4Legacy(src []byte) ([]byte, error) {
	var out []byte
	for len(src) >= 4 {
		n := int(binary.LittleEndian.Uint32(src))
		src = src[4:]
		if n <= 0 || n > len(src) || n > lz4LegacyBlock+lz4LegacyBlock/255+16 {
			if len(out) == 0 {
				return nil, fmt.Errorf("lz4: bad block size %d", n)
			}
			return out, nil
		}
		before := len(out)
		var err error
		out, err = lz4Block(out, src[:n])
		if err != nil {
			return nil, err
		}
		src = src[n:]
		if len(out) > maxVmlinux {
			return nil, fmt.Errorf("lz4: the kernel decompresses past %d MiB", maxVmlinux>>20)
		}
		if len(out)-before < lz4LegacyBlock {
			return out, nil
		}
	}
	return out, nil
}

// lz4Block appends the decoding of one LZ4 block to dst.
func lz4Block(dst, src []byte) ([]byte, error) {
	base := len(dst)
	errCorrupt := errors.New("lz4: corrupt block")
	for i := 0; i < len(src); {
		token := src[i]
		i++
		lit := int(token >> 4)
		if lit == 15 {
			for {
				if i >= len(src) {
					return nil, errCorrupt
				}
				b := src[i]
				i++
				lit += int(b)
				if b != 255 {
					break
				}
			}
		}
		if i+lit > len(src) {
			return nil, errCorrupt
		}
		dst = append(dst, src[i:i+lit]...)
		i += lit
		if i == len(src) {
			break // the last sequence has literals only
		}
		if i+2 > len(src) {
			return nil, errCorrupt
		}
		off := int(src[i]) | int(src[i+1])<<8
		i += 2
		ml := int(token & 15)
		if ml == 15 {
			for {
				if i >= len(src) {
					return nil, errCorrupt
				}
				b := src[i]
				i++
				ml += int(b)
				if b != 255 {
					break
				}
			}
		}
		ml += 4
		if off == 0 || off > len(dst)-base {
			return nil, errCorrupt
		}
		from := len(dst) - off
		for k := 0; k < ml; k++ { // may overlap: byte by byte
			dst = append(dst, dst[from+k])
		}
	}
	return dst, nil
}
