package suggest

import "testing"

func TestNearest(t *testing.T) {
	commands := []string{"bench", "run", "serve", "tools"}
	for _, tc := range []struct {
		s          string
		candidates []string
		want       string
	}{
		{"rn", commands, "run"},
		{"servee", commands, "serve"},
		{"TOOLS", commands, "tools"}, // case does not count
		{"zzzzzzzz", commands, ""},   // nothing near
		{"x", []string{"ab"}, ""},    // one letter from a two-letter word is not a typo of it
		{"pool_sise", []string{"pool_size", "pool_max"}, "pool_size"},
		{"Firecraker", []string{"None", "Wasmtime", "Oci", "Firecracker"}, "Firecracker"},
		{"anything", nil, ""},
	} {
		if got := Nearest(tc.s, tc.candidates); got != tc.want {
			t.Errorf("Nearest(%q, %q) = %q, want %q", tc.s, tc.candidates, got, tc.want)
		}
	}
}

func TestDidYouMean(t *testing.T) {
	if got := DidYouMean("rn", []string{"run"}); got != `; did you mean "run"?` {
		t.Errorf("DidYouMean = %q", got)
	}
	if got := DidYouMean("zzzz", []string{"run"}); got != "" {
		t.Errorf("DidYouMean of nothing near = %q, want empty", got)
	}
}

func TestEditDistance(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"a", "", 1}, {"", "abc", 3}, {"kitten", "sitting", 3}, {"run", "run", 0}, {"ab", "ba", 2},
	} {
		if got := editDistance(tc.a, tc.b); got != tc.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
