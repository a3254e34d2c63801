//go:build !wasip1

package wasmhttp

import "unsafe"

func httpRequest(unsafe.Pointer, uint32, unsafe.Pointer, uint32) (int, error) {
	return 0, &Error{ErrUnavailable, ErrUnavailable.Error()}
}
