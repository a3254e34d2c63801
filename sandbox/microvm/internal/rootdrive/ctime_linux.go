package rootdrive

import "syscall"

// ctime is a file's status change time: any write, chmod or rename renews it, and no one can set
// it back.
func ctime(st *syscall.Stat_t) int64 { return st.Ctim.Nano() }
