//go:build !linux

package wasm

// newRegion returns a Go-heap region: other systems have no pooled mmap regions yet.
func newRegion() region { return &heapRegion{} }
