//go:build !linux

package microvm

import "github.com/axocoatl/isolation/internal/guest"

func readToolFolder(dir string) ([]guest.File, error) { return nil, errNotLinux }
