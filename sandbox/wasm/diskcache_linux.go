package wasm

import (
	"io/fs"
	"syscall"
	"time"
)

// lastUse is the later of a file's access and modification times: wazero opens a cached module's
// file to load it, which (with relatime) moves its access time at least once a day.
func lastUse(info fs.FileInfo) time.Time {
	t := info.ModTime()
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		if a := time.Unix(st.Atim.Sec, st.Atim.Nsec); a.After(t) {
			return a
		}
	}
	return t
}
