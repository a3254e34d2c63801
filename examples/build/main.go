// Command build compiles the example Wasm tools (examples/tools/*/ with runtime WasmCompiled and
// Go source) to their entrypoints, skipping those that are up to date.
//
//	go run ./examples/build [TOOLS_DIR]   (default examples/tools)
package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"

	"github.com/axocoatl/isolation/internal/wasmbuild"
)

func main() {
	dir := "examples/tools"
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	built, err := wasmbuild.BuildExamples(ctx, dir)
	for _, b := range built {
		log.Info("example tool", "tool", b.Tool, "module", b.Module, "rebuilt", b.Rebuilt)
	}
	if err != nil {
		log.Error("building example tools", "error", err)
		os.Exit(1)
	}
}
