// Package suggest finds the word a user probably meant: the "did you mean" of the CLI and of
// the config checker, one rule for both.
package suggest

import (
	"fmt"
	"strings"
)

// Nearest is the candidate closest to s by edit distance (case-insensitively) when it is close
// enough to be a typo (at most a third of its length, 1 to 3 edits), else "". Of equally close
// candidates the first wins, so callers pass a sorted list for a stable answer.
func Nearest(s string, candidates []string) string {
	best, bestDistance := "", -1
	lower := strings.ToLower(s)
	for _, c := range candidates {
		d := editDistance(lower, strings.ToLower(c))
		if bestDistance < 0 || d < bestDistance {
			best, bestDistance = c, d
		}
	}
	if best == "" || bestDistance > max(1, min(3, len(best)/2)) {
		return ""
	}
	return best
}

// DidYouMean is `; did you mean "x"?` for Nearest(s, candidates), or "" when nothing is near:
// made to be appended to an error message.
func DidYouMean(s string, candidates []string) string {
	if n := Nearest(s, candidates); n != "" {
		return fmt.Sprintf("; did you mean %q?", n)
	}
	return ""
}

// editDistance is the Levenshtein distance of two short strings (bytes, not runes: the words
// compared are config keys, command and tool names).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
