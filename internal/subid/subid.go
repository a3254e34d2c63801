// Package subid reads and extends the subordinate id files (/etc/subuid, /etc/subgid) that give
// the Oci tier its host uid/gid ranges, and registers a range for its dedicated user when none is
// there, so that a fresh machine needs nothing done by hand.
//
// A line is "NAME_OR_ID:START:COUNT" (shadow-utils' format). Parse is lenient the way shadow is:
// comments, blank lines and malformed lines are skipped, never fatal, since other programs own
// the file too.
package subid

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Range is COUNT host ids from Start.
type Range struct {
	Start, Count uint32
}

// End is one past the last id of r.
func (r Range) End() uint64 { return uint64(r.Start) + uint64(r.Count) }

// Entry is one line of a subordinate id file.
type Entry struct {
	Owner string // a user name or a numeric uid
	Range
}

// MaxLine bounds one line of the file: a longer one is skipped.
const maxLine = 4096

// Parse returns the well-formed entries of a subordinate id file, in file order.
func Parse(b []byte) []Entry {
	var out []Entry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 256), maxLine)
	for sc.Scan() {
		if e, ok := parseLine(sc.Text()); ok {
			out = append(out, e)
		}
	}
	return out
}

func parseLine(l string) (Entry, bool) {
	l = strings.TrimSpace(l)
	if l == "" || l[0] == '#' {
		return Entry{}, false
	}
	f := strings.Split(l, ":")
	if len(f) != 3 || f[0] == "" {
		return Entry{}, false
	}
	start, err1 := strconv.ParseUint(f[1], 10, 32)
	count, err2 := strconv.ParseUint(f[2], 10, 32)
	if err1 != nil || err2 != nil || count == 0 || start+count > 1<<32-1 {
		// uid 2^32-1 is (uid_t)-1, never a valid id.
		return Entry{}, false
	}
	return Entry{Owner: f[0], Range: Range{Start: uint32(start), Count: uint32(count)}}, true
}

// Of returns the ranges of owner (a name; uid, when not empty, matches numeric entries too),
// sorted by start, with overlapping entries merged.
func Of(entries []Entry, owner, uid string) []Range {
	var rs []Range
	for _, e := range entries {
		if e.Owner == owner || (uid != "" && e.Owner == uid) {
			rs = append(rs, e.Range)
		}
	}
	sort.Slice(rs, func(i, j int) bool { return rs[i].Start < rs[j].Start })
	var out []Range
	for _, r := range rs {
		if n := len(out); n > 0 && uint64(r.Start) <= out[n-1].End() {
			if r.End() > out[n-1].End() {
				out[n-1].Count = uint32(r.End() - uint64(out[n-1].Start))
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// Slots cuts ranges into aligned slots of size ids: the host start of every whole slot, at most
// max of them, lowest first. Slots are aligned to size so that two processes reading the same
// ranges agree on them.
func Slots(ranges []Range, size uint32, max int) []uint32 {
	if size == 0 {
		return nil
	}
	var out []uint32
	for _, r := range ranges {
		first := (uint64(r.Start) + uint64(size) - 1) / uint64(size) * uint64(size)
		for s := first; s+uint64(size) <= r.End() && len(out) < max; s += uint64(size) {
			out = append(out, uint32(s))
		}
	}
	return out
}

// ErrNoRoom: no free range of the wanted size exists below the id limit.
var ErrNoRoom = errors.New("no free subordinate id range of the wanted size")

// FreeStart returns the lowest start, aligned to align and at least min, of count ids that
// overlap no entry of any of the files given (every owner's: ranges must not be shared).
func FreeStart(files [][]Entry, min, count, align uint32) (uint32, error) {
	if align == 0 {
		align = 1
	}
	var taken []Range
	for _, es := range files {
		for _, e := range es {
			taken = append(taken, e.Range)
		}
	}
	sort.Slice(taken, func(i, j int) bool { return taken[i].Start < taken[j].Start })
	s := (uint64(min) + uint64(align) - 1) / uint64(align) * uint64(align)
	for _, t := range taken {
		if s+uint64(count) <= uint64(t.Start) {
			break
		}
		if t.End() > s {
			s = (t.End() + uint64(align) - 1) / uint64(align) * uint64(align)
		}
	}
	if s+uint64(count) > 1<<32-1 {
		return 0, fmt.Errorf("%w (%d ids aligned to %d above %d)", ErrNoRoom, count, align, min)
	}
	return uint32(s), nil
}
