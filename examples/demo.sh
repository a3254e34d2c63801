#!/usr/bin/env bash
# The README's first command: build the example tools if stale, then make real sandboxed calls on
# the embedded default tier (WebAssembly via wazero) through the axoiso CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
mkdir -p bin
# The Oci tier's seccomp profile needs libseccomp-dev; the Wasm demo does not.
tags=""
if pkg-config --exists libseccomp 2>/dev/null; then tags="-tags seccomp"; fi
go build $tags -o bin/ ./cmd/axoiso ./cmd/axoiso-guest
go run ./examples/build examples/tools 2>/dev/null
echo "\$ axoiso run --tools examples/tools --input '{\"name\":\"world\"}' hello-wasm"
bin/axoiso run --tools examples/tools --input '{"name":"world"}' hello-wasm
echo "\$ axoiso run --tools examples/tools --json wordcount <<< '{\"text\":\"to be or not to be\",\"top\":2}'"
bin/axoiso run --tools examples/tools --json wordcount <<< '{"text":"to be or not to be","top":2}'
echo "\$ axoiso bench --tools examples/tools -n 500 --input '{\"name\":\"bench\"}' hello-wasm"
bin/axoiso bench --tools examples/tools -n 500 --input '{"name":"bench"}' hello-wasm
