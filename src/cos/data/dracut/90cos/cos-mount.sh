#!/bin/sh
# mount hook: state partition (ro) → the snapshot as $NEWROOT (a loop image, or a stack of
# erofs layer images under a read-only overlayfs), a tmpfs for the ephemeral overlays,
# the mode sentinel, then the layout inside the new root (cos-layout, or `cos mount`).

[ "${root%%:*}" = "cos" ] || return 0
[ -f /tmp/cos.env ] || return 0
. /tmp/cos.env

modprobe -q loop
modprobe -q squashfs
modprobe -q overlay
modprobe -q erofs

mkdir -p /run/cos/state /run/cos/overlay
if ! ismounted /run/cos/state; then
    mount -o ro "$cos_state" /run/cos/state || die "cos: cannot mount $cos_state"
fi
img="/run/cos/state/${cos_image#/}"
[ -e "$img" ] || die "cos: $cos_image not found on $cos_state"
if [ -d "$img" ]; then
    # .snapshots/N/layers: the layer images, top first, relative to .snapshots
    [ -f "$img/layers" ] || die "cos: $cos_image has no layer list"
    i=0
    lower=""
    while read -r layer; do
        [ -n "$layer" ] || continue
        mkdir -p "/run/cos/layers/$i"
        mount -t erofs -o loop,ro "/run/cos/state/.snapshots/$layer" "/run/cos/layers/$i" \
            || die "cos: cannot mount layer $layer"
        lower="${lower:+$lower:}/run/cos/layers/$i"
        i=$((i + 1))
    done < "$img/layers"
    mount -t overlay -o "ro,lowerdir=$lower" cos-root "$NEWROOT" \
        || die "cos: cannot stack the layers of $cos_image"
else
    mount -o loop,ro "$img" "$NEWROOT" || die "cos: cannot mount $img"
fi

: > "/run/cos/${cos_mode}_mode"
# The image actually booted (the active link resolved): later switches move the link,
# not what this boot runs.
real=$(readlink -f "$img")
echo "${real#/run/cos/state/}" > /run/cos/image

size=${cos_overlay#tmpfs:}
ismounted /run/cos/overlay || mount -t tmpfs -o "mode=0755,size=$size" cos-overlay /run/cos/overlay

for d in proc sys dev run; do
    mount --rbind "/$d" "$NEWROOT/$d"
done
# The layout in shell when it can (no Python start: seconds under emulation), else
# `cos mount` (live media, a configured layout, a cloud-config for an early stage).
rc=3
if [ -x "$NEWROOT/usr/libexec/cos-layout" ]; then
    chroot "$NEWROOT" /usr/libexec/cos-layout "$cos_mode" "$cos_oemlabel" \
        "$cos_persistentlabel" "$(readlink -f "$cos_state")"
    rc=$?
fi
if [ $rc -eq 3 ]; then
    chroot "$NEWROOT" /usr/bin/cos mount --mode "$cos_mode" \
        --oem-label "$cos_oemlabel" --persistent-label "$cos_persistentlabel"
    rc=$?
fi
for d in run dev sys proc; do
    umount -R "$NEWROOT/$d" 2>/dev/null || umount -l "$NEWROOT/$d"
done
[ $rc -eq 0 ] || die "cos: applying the layout failed (cos mount exit $rc)"
