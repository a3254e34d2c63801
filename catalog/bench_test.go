package catalog_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
)

// BenchmarkValidateInput: the cost of a call's input check for a typical tool schema and input,
// and for inputs near the validation bounds (the most a caller can make one validation cost).
func BenchmarkValidateInput(b *testing.B) {
	typical := `{"type":"object","required":["query"],"properties":{"query":{"type":"string","maxLength":200},"limit":{"type":"integer","minimum":1,"maximum":100},"tags":{"type":"array","items":{"type":"string"}}},"additionalProperties":false}`
	anyOfWide := make([]string, 64)
	for i := range anyOfWide {
		anyOfWide[i] = `{"type":"object","required":["k` + strconv.Itoa(i) + `"]}`
	}
	nums := make([]string, 1<<20)
	for i := range nums {
		nums[i] = strconv.Itoa(i)
	}
	for _, bc := range []struct{ name, schema, input string }{
		{"typical", typical, `{"query":"find the files","limit":10,"tags":["a","b","c"]}`},
		{"array-1M-items", `{"type":"array","items":{"type":"integer"}}`, "[" + strings.Join(nums, ",") + "]"},
		{"tree-150-levels", `{"$defs":{"n":{"type":"object","properties":{"c":{"type":"array","items":{"$ref":"#/$defs/n"}}}}},"$ref":"#/$defs/n"}`,
			strings.Repeat(`{"c":[`, 150) + `{"c":1}` + strings.Repeat(`]}`, 150)},
		{"anyOf64-x-1000-objects", `{"type":"array","items":{"anyOf":[` + strings.Join(anyOfWide, ",") + `]}}`,
			"[" + strings.TrimSuffix(strings.Repeat(`{"k63":1},`, 1000), ",") + "]"},
	} {
		tl, err := catalog.NewBuiltin("b", catalog.Manifest{Runtime: isolation.RequireNativeTrusted, InputSchema: []byte(bc.schema)})
		if err != nil {
			b.Fatal(err)
		}
		in := []byte(bc.input)
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if err := catalog.CheckInput("b", in); err != nil {
					b.Fatal(err)
				}
				err := tl.ValidateInput(in)
				if bc.name == "tree-150-levels" {
					if err == nil {
						b.Fatal("the bad leaf was accepted")
					}
				} else if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
