//go:build !linux

package rootdrive

import "syscall"

// ctime is 0 where drives are not built (the microVM tier runs image tools on Linux only).
func ctime(*syscall.Stat_t) int64 { return 0 }
