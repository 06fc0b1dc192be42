#!/usr/bin/env bash
# make vanilla: builds the base and vanilla images into the OCI layout build/oci
# (tags "base" and "vanilla"), each only when its recipe changed (stamps hold the
# recipe hash). With REGISTRY=host:port both are pushed there too.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
layout=build/oci
stamps=build/stamps
mkdir -p "$stamps"
export TMPDIR=${TMPDIR:-/var/tmp}

tag_exists() { [ -f "$layout/index.json" ] && grep -q "\"org.opencontainers.image.ref.name\":\"$1\"" "$layout/index.json"; }

base_hash=$( (cat images/base/*; find src/cos -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | sort | xargs cat) | sha256sum | cut -c1-16)
if tag_exists base && [ "$(cat "$stamps/base" 2>/dev/null)" = "$base_hash" ]; then
  echo "==> base image is up to date ($base_hash)"
else
  bash images/base/build.sh "$layout" base
  echo "$base_hash" > "$stamps/base"
fi

vanilla_hash=$( (echo "$base_hash"; cat images/vanilla/Containerfile) | sha256sum | cut -c1-16)
if tag_exists vanilla && [ "$(cat "$stamps/vanilla" 2>/dev/null)" = "$vanilla_hash" ]; then
  echo "==> vanilla image is up to date ($vanilla_hash)"
else
  echo "==> buildah: vanilla derivative"
  buildah --storage-driver vfs bud --isolation chroot --layers=false \
    --build-arg BASE="oci:$layout:base" -f images/vanilla/Containerfile -t localhost/cos/vanilla:latest .
  buildah --storage-driver vfs push --quiet localhost/cos/vanilla:latest "oci:$layout:vanilla"
  buildah --storage-driver vfs rmi --force localhost/cos/vanilla:latest >/dev/null || true
  echo "$vanilla_hash" > "$stamps/vanilla"
fi

if [ -n "${REGISTRY:-}" ]; then
  for t in base vanilla; do
    echo "==> push $REGISTRY/cos/$t:latest"
    skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$t" "docker://$REGISTRY/cos/$t:latest"
  done
fi
