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
# On a cold build cache these two steps take a minute or two (wazero, libcontainer, the example
# tools compiled to wasip1); later runs reuse the cache and take a second.
echo "demo: building axoiso (the first build on a machine takes a minute or two)..." >&2
go build $tags -o bin/ ./cmd/axoiso
# The guest agent is static (the guest has no dynamic loader), whatever cgo the host binary uses.
CGO_ENABLED=0 go build -o bin/ ./cmd/axoiso-guest
echo "demo: building the example Wasm tools..." >&2
go run ./examples/build examples/tools >/dev/null
echo "\$ axoiso run --tools examples/tools --input '{\"name\":\"world\"}' hello-wasm"
bin/axoiso run --tools examples/tools --input '{"name":"world"}' hello-wasm
echo "\$ axoiso run --tools examples/tools --json wordcount <<< '{\"text\":\"to be or not to be\",\"top\":2}'"
bin/axoiso run --tools examples/tools --json wordcount <<< '{"text":"to be or not to be","top":2}'
echo "\$ axoiso bench --tools examples/tools -n 500 --input '{\"name\":\"bench\"}' hello-wasm"
bin/axoiso bench --tools examples/tools -n 500 --input '{"name":"bench"}' hello-wasm
