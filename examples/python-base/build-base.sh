#!/bin/sh
# Builds the base image "pyyaml-base" that the example tool yaml2json names in its tool.json:
# an OCI bundle (config.json + rootfs/) holding the guest root `axoiso vm prepare` built (Python
# 3.11 from Debian) plus Debian's python3-yaml and libyaml, unpacked with dpkg -x. Any OCI
# bundle works as a base: `axoiso bundle NAME --from docker://python:3.12-slim` plus your own
# layers, or any OCI layout.
#
# usage: build-base.sh [TOOLS_DIR]   (default: this example's tools/; the base must be in the
#                                     same tools root as the tools that name it)
# env:   AXOISO_VM_DIR               the prepared guest (default /var/lib/axocoatl/vm)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tools=${1:-$here/tools}
vm=${AXOISO_VM_DIR:-/var/lib/axocoatl/vm}
base=$tools/pyyaml-base
if [ ! -x "$vm/rootfs/usr/bin/python3" ]; then
	echo "no prepared guest root with python3 in $vm: run 'axoiso vm prepare' first" >&2
	exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work" "$base.new"' EXIT
# The packages and what they need beyond the guest root (libyaml for the C parser).
(cd "$work" && apt-get download -q python3-yaml libyaml-0-2 >/dev/null)
rm -rf "$base.new"
mkdir -p "$base.new"
cp -a "$vm/rootfs" "$base.new/rootfs"
for deb in "$work"/*.deb; do
	dpkg -x "$deb" "$base.new/rootfs"
done
# Only the process's env (and args, cwd, user for a ContainerImage tool) is taken from here:
# a script tool on this base runs as uid 65534 with this environment.
cat > "$base.new/config.json" <<'JSON'
{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
 "process": {"args": ["python3"], "cwd": "/", "user": {"uid": 0, "gid": 0},
             "env": ["PATH=/usr/bin:/bin", "PYTHONPATH=/usr/lib/python3/dist-packages", "LANG=C.UTF-8"]}}
JSON
rm -rf "$base"
mv "$base.new" "$base"
echo "built $base ($(du -sh "$base/rootfs" | cut -f1))"
