package executor

import (
	"sort"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/sandbox"
)

func builtinTool(b sandbox.BuiltinTool) *catalog.Tool {
	return catalog.Builtin(b.Name, isolation.RequireNativeTrusted, b.Description, b.InputSchema)
}

func sortTools(ts []*catalog.Tool) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
}
