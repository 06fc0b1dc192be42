#!/usr/bin/env bash
# Builds the OS layer of the base image: a Debian 12 tree with kernel, systemd, dracut,
# GRUB binaries and python3, stored as tag "os" in the OCI layout given as $1.
# images/base/Containerfile then adds the toolkit as its own layer (tag "base"), so a
# toolkit change rebuilds seconds of work, not the whole OS.
# apt sources are the host's (mmdebstrap reads them when no mirror is given).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
layout=${1:?usage: build.sh OCI_LAYOUT_DIR [TAG]}
tag=${2:-os}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/cos-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

include=$(grep -v '^\s*#' "$here/packages.txt" | grep -v '^\s*$' | paste -sd, -)

echo "==> mmdebstrap bookworm ($(echo "$include" | tr , '\n' | wc -l) packages)"
mmdebstrap --variant=apt --mode=root --format=tar --quiet \
  --include="$include" \
  --customize-hook='rm -f "$1"/etc/hostname "$1"/etc/machine-id && touch "$1"/etc/machine-id' \
  --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/* "$1"/var/log/*.log' \
  --customize-hook='rm -f "$1"/boot/initrd.img-*' \
  bookworm "$work/rootfs.tar"

echo "==> OCI image $layout:$tag"
[ -f "$layout/index.json" ] || umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
tar -C "$work/bundle/rootfs" --numeric-owner --xattrs --xattrs-include='*' -xpf "$work/rootfs.tar"
umoci repack --image "$layout:$tag" "$work/bundle"
umoci config --image "$layout:$tag" --config.cmd /sbin/init \
  --config.label org.opencontainers.image.title=cos-os \
  --config.label org.opencontainers.image.description="Debian 12 OS layer of the cos base image"
umoci gc --layout "$layout"
echo "==> done: $layout:$tag"
