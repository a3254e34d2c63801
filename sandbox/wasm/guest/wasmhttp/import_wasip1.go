//go:build wasip1

package wasmhttp

import "unsafe"

//go:wasmimport axocoatl http_request
func hostHTTPRequest(req unsafe.Pointer, reqLen uint32, resp unsafe.Pointer, respCap uint32) int32

func httpRequest(req unsafe.Pointer, reqLen uint32, resp unsafe.Pointer, respCap uint32) (int, error) {
	return int(hostHTTPRequest(req, reqLen, resp, respCap)), nil
}
