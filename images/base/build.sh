#!/usr/bin/env bash
# Builds the OS layer of the base image: a Debian tree with kernel, systemd, dracut,
# GRUB binaries and python3, stored as tag TAG (default "os") in the OCI layout given
# as $1. DISTRO (default bookworm) names the file in images/distros/ that says which
# release. images/base/Containerfile then adds the toolkit as its own layer, so a
# toolkit change rebuilds seconds of work, not the whole OS.
# apt sources are the machine's, moved to the release (images/base/apt-sources).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
layout=${1:?usage: build.sh OCI_LAYOUT_DIR [TAG]}
tag=${2:-os}
distro=${DISTRO:-bookworm}
[ -f "$here/../distros/$distro" ] || { echo "build.sh: no images/distros/$distro" >&2; exit 2; }
# shellcheck source=/dev/null
. "$here/../distros/$distro"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/cos-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2086
include=$( (grep -v '^\s*#' "$here/packages.txt"; printf '%s\n' $EXTRA_PACKAGES) | grep -v '^\s*$' | paste -sd, -)
python3 "$here/apt-sources" "$SUITE" > "$work/sources.list"

echo "==> mmdebstrap $SUITE ($(echo "$include" | tr , '\n' | wc -l) packages)"
mmdebstrap --variant=apt --mode=root --format=tar --quiet \
  --include="$include" \
  --customize-hook='rm -f "$1"/etc/hostname "$1"/etc/machine-id && touch "$1"/etc/machine-id' \
  --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/* "$1"/var/log/*.log' \
  --customize-hook='rm -f "$1"/boot/initrd.img-*' \
  "$SUITE" "$work/rootfs.tar" "$work/sources.list"

echo "==> OCI image $layout:$tag"
[ -f "$layout/index.json" ] || umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
tar -C "$work/bundle/rootfs" --numeric-owner --xattrs --xattrs-include='*' -xpf "$work/rootfs.tar"
umoci repack --image "$layout:$tag" "$work/bundle"
umoci config --image "$layout:$tag" --config.cmd /sbin/init \
  --config.label org.opencontainers.image.title=cos-os \
  --config.label org.opencontainers.image.description="$DESCRIPTION"
umoci gc --layout "$layout"
echo "==> done: $layout:$tag"
