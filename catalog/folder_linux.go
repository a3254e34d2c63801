package catalog

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// resolvedBeneath returns where an opened tool folder really is, relative to the tools root: the
// kernel's name for the open directory (/proc/self/fd) made relative to the root's own. The
// os.Root open already refused anything leaving the root; this hands on the confined path, so
// no later user of Tool.Dir follows the folder's symlink again.
func resolvedBeneath(root, dir *os.Root, name string, _ fs.FileInfo) (string, error) {
	rootReal, err := fdPath(root)
	if err != nil {
		return "", err
	}
	dirReal, err := fdPath(dir)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(rootReal, dirReal)
	if err != nil || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("resolves to %s, outside the tools root", dirReal)
	}
	return rel, nil
}

// resolvedFile returns the opened file's path relative to the folder (symlinks inside it resolved).
func resolvedFile(dir *os.Root, f *os.File, rel string) (string, error) {
	dirReal, err := fdPath(dir)
	if err != nil {
		return "", err
	}
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
	if err != nil {
		return "", err
	}
	r, err := filepath.Rel(dirReal, real)
	if err != nil || !filepath.IsLocal(r) {
		return "", fmt.Errorf("%q resolves outside the tool folder", rel)
	}
	return r, nil
}

func fdPath(r *os.Root) (string, error) {
	d, err := r.Open(".")
	if err != nil {
		return "", err
	}
	defer d.Close()
	return os.Readlink("/proc/self/fd/" + strconv.Itoa(int(d.Fd())))
}
