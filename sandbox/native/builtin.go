package native

import (
	"context"
	"encoding/json"
	"fmt"
)

// Builtin returns the built-in trusted tools:
//   - echo: returns its input unchanged (a probe for the whole call path);
//   - json-stats: counts the values of each JSON type in its input and its maximum depth.
func Builtin() []Tool {
	return []Tool{
		{Name: "echo", Description: "Returns its input unchanged.", Func: func(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
			return in, nil
		}},
		{Name: "json-stats", Description: "Counts objects, arrays, strings, numbers, booleans and nulls in the input, and its depth.", Func: jsonStats},
	}
}

func jsonStats(_ context.Context, in json.RawMessage) (json.RawMessage, error) {
	var v any
	if err := json.Unmarshal(in, &v); err != nil {
		return nil, fmt.Errorf("json-stats: %w", err)
	}
	counts := map[string]int{}
	var depth func(any) int
	depth = func(v any) int {
		d := 0
		switch x := v.(type) {
		case map[string]any:
			counts["objects"]++
			for _, e := range x {
				d = max(d, depth(e))
			}
			return d + 1
		case []any:
			counts["arrays"]++
			for _, e := range x {
				d = max(d, depth(e))
			}
			return d + 1
		case string:
			counts["strings"]++
		case float64:
			counts["numbers"]++
		case bool:
			counts["booleans"]++
		case nil:
			counts["nulls"]++
		}
		return 0
	}
	out := map[string]any{"depth": depth(v), "counts": counts}
	return json.Marshal(out)
}
