package catalog

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/axocoatl/isolation"
)

// CheckInput checks that a call's input is one JSON value, valid UTF-8, nested at most
// MaxInputDepth levels. The error matches isolation.ErrInvalidInput and names the tool.
// encoding/json alone would accept invalid UTF-8 inside strings (and the bytes would then be
// passed to the tool and echoed raw in JSON responses).
func CheckInput(tool string, input []byte) error {
	bad := func(format string, args ...any) error {
		return &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: tool, Message: fmt.Sprintf(format, args...)}
	}
	if !utf8.Valid(input) {
		return bad("input is not valid UTF-8 (first bad byte at offset %d)", firstInvalidUTF8(input))
	}
	if d := jsonDepth(input); d > MaxInputDepth {
		return bad("input is nested too deep (more than %d levels)", MaxInputDepth)
	}
	if !json.Valid(input) {
		return bad("input is not a single valid JSON value")
	}
	return nil
}

func firstInvalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			return i
		}
		i += n
	}
	return -1
}
