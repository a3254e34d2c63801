package sandbox

import "strings"

// MergeEnv returns base with env's NAME=value entries added, an entry of env replacing base's of
// the same name: a tier merges a call's Env (tool.json env and the tool's secrets) over the
// environment it gives every tool.
func MergeEnv(base, env []string) []string {
	if len(env) == 0 {
		return base
	}
	set := make(map[string]bool, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		set[k] = true
	}
	out := make([]string, 0, len(base)+len(env))
	for _, kv := range base {
		if k, _, _ := strings.Cut(kv, "="); !set[k] {
			out = append(out, kv)
		}
	}
	return append(out, env...)
}
