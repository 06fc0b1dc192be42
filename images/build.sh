#!/usr/bin/env bash
# make vanilla: builds the images into the OCI layout build/oci, each only when its
# recipe changed (build/stamps holds recipe hashes):
#   os       Debian 12 tree (mmdebstrap, host apt sources)         images/base/build.sh
#            (also kept in COS_IMAGE_CACHE, default /var/cache/cos-images, for other clones)
#   base     os + the toolkit as one layer                         images/base/Containerfile
#   vanilla  base + `cos init` (a derivative)                      images/vanilla/Containerfile
#   vanilla-rechunked  with RECHUNK=1: vanilla rewritten by `cos rechunk` (layers per
#            package; the previous vanilla-rechunked is --prev, so unchanged packages
#            keep their layers)
# With REGISTRY=host:port, base and vanilla are also pushed there (cos/base, cos/vanilla;
# with RECHUNK=1 also cos/vanilla:rechunked).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
layout=build/oci
stamps=build/stamps
mkdir -p "$stamps"
export TMPDIR=${TMPDIR:-/var/tmp}
# A storage of our own under build/, emptied after each build: builds never touch the
# host's container storage and vfs layers (full copies) do not pile up.
B=(buildah --storage-driver vfs --root "$repo/build/containers/storage" --runroot "$repo/build/containers/run")

tag_exists() { [ -f "$layout/index.json" ] && grep -q "\"org.opencontainers.image.ref.name\":\"$1\"" "$layout/index.json"; }
fresh() { tag_exists "$1" && [ "$(cat "$stamps/$1" 2>/dev/null)" = "$2" ]; }
hash_of() { sha256sum | cut -c1-16; }

# buildah bud CONTEXT CONTAINERFILE TAG BUILD-ARG...
bud() {
  local ctx=$1 file=$2 tag=$3; shift 3
  local args=()
  for a in "$@"; do args+=(--build-arg "$a"); done
  "${B[@]}" bud --isolation chroot --layers=false "${args[@]}" -f "$file" -t "localhost/cos/$tag:latest" "$ctx"
  "${B[@]}" push --quiet "localhost/cos/$tag:latest" "oci:$layout:$tag"
  "${B[@]}" rmi --all --force >/dev/null 2>&1 || true
}

# The OS layer depends only on its recipe and the machine's apt sources, so a copy is
# kept outside the work tree (COS_IMAGE_CACHE): another clone on this machine takes it
# instead of downloading and unpacking Debian again. The newest three are kept.
cache=${COS_IMAGE_CACHE:-/var/cache/cos-images}
sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
  /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
os_hash=$( (cat images/base/build.sh images/base/packages.txt; echo "$sources") | hash_of)
if fresh os "$os_hash"; then
  echo "==> os layer is up to date ($os_hash)"
elif [ -f "$cache/os-$os_hash/index.json" ]; then
  echo "==> os layer from $cache/os-$os_hash"
  skopeo copy --quiet --preserve-digests "oci:$cache/os-$os_hash:os" "oci:$layout:os"
  echo "$os_hash" > "$stamps/os"
else
  bash images/base/build.sh "$layout" os
  echo "$os_hash" > "$stamps/os"
  mkdir -p "$cache"
  kept=$(mktemp -d "$cache/.os-XXXXXX")
  skopeo copy --quiet --preserve-digests "oci:$layout:os" "oci:$kept:os"
  rm -rf "$cache/os-$os_hash"
  mv -T "$kept" "$cache/os-$os_hash"
  ls -dt "$cache"/os-* | tail -n +4 | xargs -r rm -rf
fi

base_hash=$( (echo "$os_hash"; cat images/base/Containerfile images/base/cos-wrapper;
  find src/cos -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | sort | xargs cat) | hash_of)
if fresh base "$base_hash"; then
  echo "==> base image is up to date ($base_hash)"
else
  echo "==> buildah: base image (os + toolkit)"
  bud . images/base/Containerfile base "OS=oci:$layout:os"
  echo "$base_hash" > "$stamps/base"
fi

vanilla_hash=$( (echo "$base_hash"; cat images/vanilla/Containerfile) | hash_of)
if fresh vanilla "$vanilla_hash"; then
  echo "==> vanilla image is up to date ($vanilla_hash)"
else
  echo "==> buildah: vanilla derivative"
  bud images/vanilla images/vanilla/Containerfile vanilla "BASE=oci:$repo/$layout:base"
  echo "$vanilla_hash" > "$stamps/vanilla"
fi

if [ "${RECHUNK:-0}" = 1 ]; then
  if fresh vanilla-rechunked "$vanilla_hash"; then
    echo "==> vanilla-rechunked is up to date ($vanilla_hash)"
  else
    echo "==> cos rechunk: vanilla-rechunked"
    prev=()
    tag_exists vanilla-rechunked && prev=(--prev "oci:$layout:vanilla-rechunked")
    py=$repo/.venv/bin/python
    [ -x "$py" ] || py=python3
    COS_CACHE_DIR=$repo/build/cache PYTHONPATH=$repo/src "$py" -m cos rechunk "${prev[@]}" \
      "oci:$layout:vanilla" "oci:$layout:vanilla-rechunked"
    echo "$vanilla_hash" > "$stamps/vanilla-rechunked"
  fi
fi

if [ -n "${REGISTRY:-}" ]; then
  for t in base vanilla; do
    echo "==> push $REGISTRY/cos/$t:latest"
    skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$t" "docker://$REGISTRY/cos/$t:latest"
  done
  if [ "${RECHUNK:-0}" = 1 ]; then
    echo "==> push $REGISTRY/cos/vanilla:rechunked"
    skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
      "oci:$layout:vanilla-rechunked" "docker://$REGISTRY/cos/vanilla:rechunked"
  fi
fi
