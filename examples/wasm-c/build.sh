#!/bin/sh
# Builds the C example Wasm tool(s) under tools/ with clang's wasm32-wasi target and the WASI
# C library. On Debian 12: apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32
# (clang-14 there; any clang >= 14 with the WASI sysroot works: set CC).
#
# usage: build.sh [TOOLS_DIR]   (default: tools/ beside this script)
# env:   CC                    (default: clang, else clang-14)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cc=${CC:-}
if [ -z "$cc" ]; then
	for c in clang clang-14; do
		if command -v "$c" >/dev/null; then cc=$c; break; fi
	done
fi
if [ -z "$cc" ]; then
	echo "build.sh: no clang found: apt-get install clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32" >&2
	exit 1
fi
tools=${1:-$here/tools}
for src in "$tools"/*/*.c; do
	out="${src%.c}.wasm"
	"$cc" --target=wasm32-wasi -O2 -s -o "$out" "$src"
	echo "built $out ($(wc -c < "$out") bytes)"
done
