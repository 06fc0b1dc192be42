#!/usr/bin/env bash
# Installs everything the toolkit, its image recipes and its test suite need on a
# Debian 12 host. apt and pip use the sources and index configured on the machine.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # image transport and building
  skopeo umoci mmdebstrap buildah podman crun fuse-overlayfs uidmap containers-storage
  golang-github-containers-common docker-registry
  # filesystems and partitioning
  e2fsprogs dosfstools mtools squashfs-tools gdisk parted util-linux fdisk xorriso erofs-utils
  # getfattr: the boot's shell layout reads overlayfs's opaque markers (tests run it here)
  attr
  # bootloader
  grub-pc-bin grub-efi-amd64-bin grub2-common grub-common
  # booting disks in tests
  qemu-system-x86 qemu-utils ovmf
  # small helpers used by recipes and tests
  zstd busybox-static curl jq make
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The distribution registry's postinst tries to start a service; without systemd
# nothing runs, and tests start their own instance on 127.0.0.1.

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.cos-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing the toolkit and its Python dependencies into .venv"
  .venv/bin/pip install -q -e '.[dev]'
  echo "$want" > "$stamp"
fi
echo "setup: host ready"
