//go:build !linux

package rootdrive

import (
	"io/fs"
	"os"
	"syscall"
)

// ctime is 0 where drives are not built (the microVM tier runs image tools on Linux only).
func ctime(*syscall.Stat_t) int64 { return 0 }

// lstatIn stats rel inside root.
func lstatIn(root *os.Root, _ *os.File, rel, _ string) (fs.FileInfo, error) { return root.Lstat(rel) }
