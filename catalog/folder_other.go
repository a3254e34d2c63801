//go:build !linux

package catalog

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
)

// resolvedBeneath: without a way to name an open directory, a tool folder must not be a symlink
// (os.Root already keeps every open inside the root; refusing the symlink keeps Tool.Dir the
// real, confined path).
func resolvedBeneath(_, _ *os.Root, name string, fi fs.FileInfo) (string, error) {
	if fi.Mode()&fs.ModeSymlink != 0 {
		return "", errors.New("a tool folder that is a symlink is only supported on Linux")
	}
	return name, nil
}

// resolvedFile: an entrypoint must not be a symlink on this OS (see resolvedBeneath).
func resolvedFile(dir *os.Root, _ *os.File, rel string) (string, error) {
	p := filepath.Clean(rel)
	for q := p; q != "." && q != string(filepath.Separator); q = filepath.Dir(q) {
		fi, err := dir.Lstat(q)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return "", errors.New("an entrypoint through a symlink is only supported on Linux")
		}
	}
	return p, nil
}
