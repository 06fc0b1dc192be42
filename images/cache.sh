#!/usr/bin/env bash
# The build cache of this machine (COS_IMAGE_CACHE, default /var/cache/cos-images):
# images and test disks are kept by the hash of their recipe, so another clone of the
# repository (a CI run, a second work tree) takes what was already built from the same
# sources instead of building it again. A fresh machine builds everything, as before.
#
#   cache.sh restore TAG HASH LAYOUT   LAYOUT:TAG from the cache, if it holds HASH's build
#   cache.sh keep    TAG HASH LAYOUT   LAYOUT:TAG into the cache
#   cache.sh restore-file KIND HASH FILE...   files (sparse copies) from the cache
#   cache.sh keep-file    KIND HASH FILE...   files into the cache
#
# restore exits 1 when the cache does not hold the build. Images share one OCI layout
# ($cache/oci: a blob two images have is kept once); files sit in $cache/files/KIND.HASH/.
# The newest three builds of each tag or kind are kept. A hash covers everything the
# build reads (the callers compute it), so a hit is the very build the caller would make.
set -euo pipefail
cache=${COS_IMAGE_CACHE:-/var/cache/cos-images}
store=$cache/oci
kept=$cache/kept # one stamp per kept build, its mtime the order of eviction
op=${1:?usage: cache.sh restore|keep|restore-file|keep-file ...}
name=${2:?name}
hash=${3:?hash}
shift 3
id=$name.$hash
mkdir -p "$kept"

evict() { # all but the newest three builds of $name
  local old
  # shellcheck disable=SC2012
  ls -t "$kept" | grep -E "^${name//./\\.}\.[0-9a-f]+$" | tail -n +4 | while read -r old; do
    if [ -d "$cache/files/$old" ]; then
      rm -rf "$cache/files/$old"
    else
      umoci rm --image "$store:$old" 2>/dev/null || true
    fi
    rm -f "$kept/$old"
  done
}

case $op in
  restore)
    layout=${1:?layout}
    [ -f "$kept/$id" ] && [ -f "$store/index.json" ] || exit 1
    grep -q "\"org.opencontainers.image.ref.name\":\"$id\"" "$store/index.json" || exit 1
    skopeo copy --quiet --preserve-digests "oci:$store:$id" "oci:$layout:$name"
    touch "$kept/$id"
    ;;
  keep)
    layout=${1:?layout}
    [ -f "$store/index.json" ] || umoci init --layout "$store"
    skopeo copy --quiet --preserve-digests "oci:$layout:$name" "oci:$store:$id"
    touch "$kept/$id"
    evict
    umoci gc --layout "$store"
    ;;
  restore-file)
    [ -f "$kept/$id" ] && [ -d "$cache/files/$id" ] || exit 1
    for f in "$@"; do
      [ -f "$cache/files/$id/$(basename "$f")" ] || exit 1
    done
    for f in "$@"; do
      cp --sparse=always "$cache/files/$id/$(basename "$f")" "$f.part"
      mv -f "$f.part" "$f"
    done
    touch "$kept/$id"
    ;;
  keep-file)
    tmp=$(mktemp -d "$cache/.files-XXXXXX")
    for f in "$@"; do cp --sparse=always "$f" "$tmp/"; done
    mkdir -p "$cache/files"
    rm -rf "$cache/files/$id"
    mv -T "$tmp" "$cache/files/$id"
    touch "$kept/$id"
    evict
    ;;
  *)
    echo "cache.sh: unknown operation $op" >&2
    exit 2
    ;;
esac
