package microvm

import (
	"errors"
	"fmt"

	"github.com/axocoatl/isolation"
)

// Bounds on the tool folder sent into a VM (besides MaxToolBytes).
const (
	// MaxToolFiles bounds the entries (files and directories) of a tool folder.
	MaxToolFiles = 4096
	// maxToolDepth bounds the folder's nesting (the walk recurses once per level).
	maxToolDepth = 32
)

// errToolFolder is the error for a tool folder the VM must not receive: isolation.ErrInvalidTool,
// naming the entry (rel is relative to the folder; "." is the folder itself).
func errToolFolder(dir, rel, format string, args ...any) error {
	return &isolation.Error{Kind: isolation.ErrInvalidTool,
		Message: fmt.Sprintf("tool folder %s: %s: %s", dir, rel, fmt.Sprintf(format, args...))}
}

//lint:ignore U1000 used by toolfolder_other.go
var errNotLinux = errors.New("the microVM tier reads tool folders on Linux only")
