package executor

import (
	"sort"

	"github.com/axocoatl/isolation/catalog"
)

func sortTools(ts []*catalog.Tool) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
}
