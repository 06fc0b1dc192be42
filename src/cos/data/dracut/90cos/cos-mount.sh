#!/bin/sh
# mount hook: state partition (ro) → the snapshot as $NEWROOT (a loop image, or a stack of
# erofs layer images under a read-only overlayfs), a tmpfs for the ephemeral overlays,
# the mode sentinel, then the layout inside the new root (cos-layout, or `cos mount`).

[ "${root%%:*}" = "cos" ] || return 0
[ -f /tmp/cos.env ] || return 0
. /tmp/cos.env

# Under emulation every process start costs tens of milliseconds: one mkdir, and the
# mounts of the snapshot in one `mount -a` of a table (kept in /run/cos/root.fstab for
# a reader). The modules were loaded while udev settled (cos-parse.sh); a mount only
# waits for them.
mkdir -p /run/cos/state /run/cos/overlay
if ! ismounted /run/cos/state; then
    mount -o ro "$cos_state" /run/cos/state || die "cos: cannot mount $cos_state"
fi
img="/run/cos/state/${cos_image#/}"
[ -e "$img" ] || die "cos: $cos_image not found on $cos_state"
if [ -z "${cos_modprobe:-}" ] || ! wait "$cos_modprobe" 2>/dev/null; then
    modprobe -qa $cos_modules
fi
table=/run/cos/root.fstab
if [ -d "$img" ]; then
    # .snapshots/N/layers: the layer images, top first, relative to .snapshots
    [ -f "$img/layers" ] || die "cos: $cos_image has no layer list"
    i=0 lower= dirs= entries=
    while read -r layer; do
        [ -n "$layer" ] || continue
        case "$layer" in
            *[[:space:]]*) die "cos: $cos_image/layers names a layer with a blank in it" ;;
        esac
        dirs="$dirs /run/cos/layers/$i"
        entries="$entries/run/cos/state/.snapshots/$layer /run/cos/layers/$i erofs loop,ro 0 0
"
        lower="${lower:+$lower:}/run/cos/layers/$i"
        i=$((i + 1))
    done < "$img/layers"
    [ -n "$lower" ] || die "cos: $cos_image has no layers"
    mkdir -p $dirs
    printf '%scos-root %s overlay ro,lowerdir=%s 0 0\n' "$entries" "$NEWROOT" "$lower" > "$table"
    mount -a -T "$table" || die "cos: cannot stack the layers of $cos_image"
else
    mount -o loop,ro "$img" "$NEWROOT" || die "cos: cannot mount $img"
fi
# Direct I/O on the snapshot's loop devices: each read goes to the disk once and in
# parallel with the others (buffered, the loop's worker waits on one read at a time, and
# every block is cached twice). Where the disk's sectors are larger than the loop's, the
# kernel refuses and the loop stays buffered.
for f in /sys/block/loop*/loop/backing_file; do
    read -r backing < "$f" 2>/dev/null || continue
    case "$backing" in
        /run/cos/state/*)
            dev=${f#/sys/block/}
            losetup --direct-io=on "/dev/${dev%%/*}" 2>/dev/null
            ;;
    esac
done

: > "/run/cos/${cos_mode}_mode"
# The image actually booted (the active link resolved): later switches move the link,
# not what this boot runs.
real=$(readlink -f "$img")
echo "${real#/run/cos/state/}" > /run/cos/image

# The overlays' tmpfs, and what the layout needs of the initrd inside the new root.
table=/tmp/cos-layout.fstab
: > "$table"
if ! ismounted /run/cos/overlay; then
    echo "cos-overlay /run/cos/overlay tmpfs mode=0755,size=${cos_overlay#tmpfs:} 0 0" > "$table"
fi
printf '/%s %s/%s none rbind 0 0\n' proc "$NEWROOT" proc sys "$NEWROOT" sys \
    dev "$NEWROOT" dev run "$NEWROOT" run >> "$table"
mount -a -T "$table" || die "cos: cannot mount the overlays' tmpfs or bind the initrd's /proc, /sys, /dev, /run"
# The layout in shell when it can (no Python start: seconds under emulation), else
# `cos mount` (live media, a configured layout, a cloud-config for an early stage).
# The initrd's copy of cos-layout (from the same image) runs on the new root with the
# initrd's tools: the new root's would be read cold through the loop devices.
rc=3
if [ -x /usr/libexec/cos-layout ]; then
    COS_STAGE_ROOT=$NEWROOT COS_KERNEL_HOSTNAME=1 /usr/libexec/cos-layout "$cos_mode" \
        "$cos_oemlabel" "$cos_persistentlabel" "$(readlink -f "$cos_state")"
    rc=$?
elif [ -x "$NEWROOT/usr/libexec/cos-layout" ]; then
    chroot "$NEWROOT" /usr/libexec/cos-layout "$cos_mode" "$cos_oemlabel" \
        "$cos_persistentlabel" "$(readlink -f "$cos_state")"
    rc=$?
fi
if [ $rc -eq 3 ]; then
    chroot "$NEWROOT" /usr/bin/cos mount --mode "$cos_mode" \
        --oem-label "$cos_oemlabel" --persistent-label "$cos_persistentlabel"
    rc=$?
fi
umount -R "$NEWROOT/run" "$NEWROOT/dev" "$NEWROOT/sys" "$NEWROOT/proc" 2>/dev/null ||
    for d in run dev sys proc; do
        ! ismounted "$NEWROOT/$d" || umount -R "$NEWROOT/$d" 2>/dev/null || umount -l "$NEWROOT/$d"
    done
[ $rc -eq 0 ] || die "cos: applying the layout failed (cos mount exit $rc)"
