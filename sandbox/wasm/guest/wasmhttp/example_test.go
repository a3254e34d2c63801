package wasmhttp_test

import (
	"errors"
	"fmt"

	"github.com/axocoatl/isolation/sandbox/wasm/guest/wasmhttp"
)

// A tool fetches a page under its call's egress policy. Built for the Wasm tier (GOOS=wasip1)
// it reaches the host; anywhere else, as here, every request fails with ErrUnavailable.
func Example() {
	resp, err := wasmhttp.Get("https://api.github.com/repos/golang/go")
	switch {
	case errors.Is(err, wasmhttp.ErrDenied):
		fmt.Println("not in the call's policy:", err)
	case err != nil: // ErrTimeout, ErrTooLarge, ErrLimit, ErrInvalid, ErrFailed or ErrUnavailable
		fmt.Println(err)
	default:
		fmt.Println(resp.Status, len(resp.Body), resp.URL)
	}
	// Output: http_request is only available in the axocoatl Wasm tier
}

// A POST with a JSON body and a time cap of its own.
func ExampleDo() {
	_, err := wasmhttp.Do(wasmhttp.Request{Method: "POST", URL: "https://api.example.com/v1/items",
		Headers: map[string][]string{"Content-Type": {"application/json"}}, Body: []byte(`{"name":"x"}`), TimeoutMS: 2000})
	fmt.Println(errors.Is(err, wasmhttp.ErrUnavailable))
	// Output: true
}
