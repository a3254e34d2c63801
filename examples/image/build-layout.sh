#!/bin/sh
# Builds the example image: an OCI image layout (what `skopeo copy … oci:DIR`, `buildah push
# … oci:DIR` or `docker buildx build --output type=oci` produce) holding one static program,
# app/ (a Go program built with CGO_ENABLED=0), with the labels axoiso reads when there is no
# tool.json: org.opencontainers.image.description and io.axocoatl.input-schema. umoci (Debian:
# apt-get install umoci) writes the layout; nothing is pulled from a registry.
#
# usage: build-layout.sh [LAYOUT_DIR]   (default: ./layout beside this script)
# then:  axoiso bundle digest --tools examples/image/tools --from oci:LAYOUT_DIR:latest
set -eu
here=$(cd "$(dirname "$0")" && pwd)
layout=${1:-$here/layout}
command -v umoci >/dev/null || { echo "build-layout.sh: umoci not found (apt-get install umoci)" >&2; exit 1; }
go=${GO:-go}
command -v "$go" >/dev/null || go=/usr/local/go/bin/go
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$layout"
umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --image "$layout:latest" "$work/bundle" >/dev/null
rootfs=$work/bundle/rootfs
# The program, and the mount points every tier needs in a read-only root.
mkdir -p "$rootfs/app" "$rootfs/tmp" "$rootfs/axocoatl" "$rootfs/proc" "$rootfs/dev" "$rootfs/etc"
(cd "$here/app" && CGO_ENABLED=0 GOOS=linux "$go" build -trimpath -ldflags=-s -o "$rootfs/app/digest" .)
printf 'nonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' > "$rootfs/etc/passwd"
umoci repack --image "$layout:latest" "$work/bundle" >/dev/null
umoci config --image "$layout:latest" \
	--config.entrypoint /app/digest --config.workingdir /app --config.user 65532:65532 \
	--config.env PATH=/app \
	--config.label 'org.opencontainers.image.description=SHA-256, bytes and words of a text; a static program in an OCI image' \
	--config.label 'io.axocoatl.input-schema={"type":"object","properties":{"text":{"type":"string","maxLength":65536}},"required":["text"],"additionalProperties":false}'
umoci gc --layout "$layout"
echo "built the OCI layout $layout (tag latest)"
