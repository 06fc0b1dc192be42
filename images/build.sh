#!/usr/bin/env bash
# make vanilla: builds the images into the OCI layout build/oci, each only when its
# recipe changed (build/stamps holds recipe hashes). DISTRO (default bookworm) picks
# images/distros/DISTRO; tags other than the default's carry its suffix (os-trixie, ...):
#   os       Debian tree (mmdebstrap, host apt sources)            images/base/build.sh
#   base     os + the toolkit as one layer                         images/base/Containerfile
#   vanilla  base + `cos init` (a derivative)                      images/vanilla/Containerfile
#   vanilla-rechunked  with RECHUNK=1: vanilla rewritten by `cos rechunk` (layers per
#            package; the previous vanilla-rechunked is --prev, so unchanged packages
#            keep their layers)
# With REGISTRY=host:port, base and vanilla are also pushed there (cos/base, cos/vanilla,
# tag latest for the default distribution, else the suite's name; with RECHUNK=1 also
# cos/vanilla:rechunked).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
layout=build/oci
stamps=build/stamps
mkdir -p "$stamps"
distro=${DISTRO:-bookworm}
[ -f "images/distros/$distro" ] || { echo "images/build.sh: no images/distros/$distro" >&2; exit 2; }
# shellcheck source=/dev/null
. "images/distros/$distro"
S=$TAG_SUFFIX
pushed_tag=latest
[ -z "$S" ] || pushed_tag=$SUITE
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

# Each image is made only when its recipe changed (stamps), and then taken from this
# machine's build cache when another clone already built that recipe (images/cache.sh):
# the OS layer depends on its recipe and the machine's apt sources, base and vanilla on
# what they are built from. Made here, an image goes to the cache for the next clone.
# made TAG HASH COMMAND...
made() {
  local tag=$1 hash=$2
  shift 2
  if fresh "$tag" "$hash"; then
    echo "==> $tag is up to date ($hash)"
    return
  fi
  if bash images/cache.sh restore "$tag" "$hash" "$layout"; then
    echo "==> $tag from the build cache ($hash)"
  else
    "$@"
    bash images/cache.sh keep "$tag" "$hash" "$layout"
  fi
  echo "$hash" > "$stamps/$tag"
}

sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
  /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
os_hash=$( (cat images/base/build.sh images/base/apt-sources images/base/packages.txt \
  "images/distros/$distro"; echo "$sources") | hash_of)
made "os$S" "$os_hash" env DISTRO="$distro" bash images/base/build.sh "$layout" "os$S"

base_hash=$( (echo "$os_hash"; cat images/base/Containerfile images/base/cos-wrapper;
  find src/cos -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | sort | xargs cat) | hash_of)
made "base$S" "$base_hash" \
  bud . images/base/Containerfile "base$S" "OS=oci:$layout:os$S" "IMAGE_TAG=$pushed_tag"

vanilla_hash=$( (echo "$base_hash"; cat images/vanilla/Containerfile) | hash_of)
made "vanilla$S" "$vanilla_hash" \
  bud images/vanilla images/vanilla/Containerfile "vanilla$S" "BASE=oci:$repo/$layout:base$S" \
  "IMAGE_TAG=$pushed_tag"

if [ "${RECHUNK:-0}" = 1 ]; then
  if fresh "vanilla$S-rechunked" "$vanilla_hash"; then
    echo "==> vanilla$S-rechunked is up to date ($vanilla_hash)"
  else
    echo "==> cos rechunk: vanilla$S-rechunked"
    prev=()
    tag_exists "vanilla$S-rechunked" && prev=(--prev "oci:$layout:vanilla$S-rechunked")
    py=$repo/.venv/bin/python
    [ -x "$py" ] || py=python3
    COS_CACHE_DIR=$repo/build/cache PYTHONPATH=$repo/src "$py" -m cos rechunk "${prev[@]}" \
      "oci:$layout:vanilla$S" "oci:$layout:vanilla$S-rechunked"
    echo "$vanilla_hash" > "$stamps/vanilla$S-rechunked"
  fi
fi

if [ -n "${REGISTRY:-}" ]; then
  for t in base vanilla; do
    echo "==> push $REGISTRY/cos/$t:$pushed_tag"
    skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$t$S" \
      "docker://$REGISTRY/cos/$t:$pushed_tag"
  done
  if [ "${RECHUNK:-0}" = 1 ]; then
    rtag=rechunked
    [ -z "$S" ] || rtag=$SUITE-rechunked
    echo "==> push $REGISTRY/cos/vanilla:$rtag"
    skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
      "oci:$layout:vanilla$S-rechunked" "docker://$REGISTRY/cos/vanilla:$rtag"
  fi
fi
