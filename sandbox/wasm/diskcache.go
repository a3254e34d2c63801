package wasm

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// defaultMaxCacheDirBytes bounds Config.CacheDir when MaxCacheDirBytes is 0.
const defaultMaxCacheDirBytes = 2 << 30

// cacheTrimInterval is the least time between two trims after compiles: a trim reads the
// directory (a few hundred entries at most), which costs far less than the compile it follows.
const cacheTrimInterval = 30 * time.Second

// staleTemp is how old a temporary file of wazero's (written, then renamed into place) must be
// before a trim removes it: younger ones may be another process's write in progress.
const staleTemp = time.Hour

// trimCacheDir bounds wazero's on-disk compilation cache under dir to max bytes. wazero writes a
// file per compiled module (under a subdirectory per wazero version and platform) and never
// removes one, so every edited tool would leave its old machine code behind for good. Abandoned
// temporary files go, then compiled modules of every version, least recently used first (by
// access time where the filesystem keeps it, else by modification time: another version's files
// are never used by this build, so they go first), until the total is at most max. A file removed while another process reads it stays readable to it;
// a module whose file was removed compiles again on its next use. It returns the bytes removed.
func trimCacheDir(dir string, max int64, now time.Time) (removed int64, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	type file struct {
		path string
		size int64
		used time.Time
	}
	var files []file
	var total int64
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "wazero-") {
			continue // not wazero's: left alone
		}
		sub, err := os.ReadDir(p)
		if err != nil {
			return removed, err
		}
		for _, f := range sub {
			info, err := f.Info()
			if err != nil || !info.Mode().IsRegular() {
				continue
			}
			fp := filepath.Join(p, f.Name())
			if strings.HasSuffix(f.Name(), ".tmp") {
				if now.Sub(info.ModTime()) > staleTemp && os.Remove(fp) == nil {
					removed += info.Size()
				}
				continue
			}
			files = append(files, file{fp, info.Size(), lastUse(info)})
			total += info.Size()
		}
	}
	if total <= max {
		return removed, nil
	}
	slices.SortFunc(files, func(a, b file) int { return a.used.Compare(b.used) })
	for _, f := range files {
		if total <= max {
			break
		}
		if err := os.Remove(f.path); err != nil && !os.IsNotExist(err) {
			return removed, err
		}
		total -= f.size
		removed += f.size
	}
	return removed, nil
}
