#!/bin/sh
# cmdline hook: root=LABEL=COS_STATE cos.image=.snapshots/N/snapshot.img cos.mode=MODE
# Claims the root so rootfs-block does not mount the state partition itself.

if getarg cos.disable >/dev/null || getarg rd.cos.disable >/dev/null; then
    return 0 2>/dev/null || exit 0
fi

cos_image=$(getarg cos.image=)
if [ -n "$cos_image" ]; then
    cos_mode=$(getarg cos.mode=)
    [ -n "$cos_mode" ] || cos_mode=active
    cos_oemlabel=$(getarg cos.oemlabel=)
    [ -n "$cos_oemlabel" ] || cos_oemlabel=COS_OEM
    cos_persistentlabel=$(getarg cos.persistentlabel=)
    [ -n "$cos_persistentlabel" ] || cos_persistentlabel=COS_PERSISTENT
    cos_overlay=$(getarg cos.overlay=)
    [ -n "$cos_overlay" ] || cos_overlay=tmpfs:25%
    # Values end up in a sourced file and in paths: accept only plain words.
    case "$cos_mode" in
        active|passive|recovery|live) ;;
        *) die "cos: cos.mode=$cos_mode is not active, passive, recovery or live" ;;
    esac
    for v in "$cos_image" "$cos_oemlabel" "$cos_persistentlabel" "$cos_overlay"; do
        case "$v" in
            *[!A-Za-z0-9._/:%-]*) die "cos: invalid character in kernel argument value '$v'" ;;
        esac
    done
    case "$root" in
        block:*) cos_state=${root#block:} ;;
        *) cos_state=$(label_uuid_to_dev "$(getarg root=)") ;;
    esac
    # The kernel modules the boot mounts with: its snapshot is a stack of erofs layers
    # (active, passive) or one squashfs or ext image (recovery, live).
    case "$cos_mode" in
        active | passive) cos_modules="loop overlay erofs" ;;
        *) cos_modules="loop overlay squashfs" ;;
    esac
    {
        echo "cos_modules='$cos_modules'"
        echo "cos_state='$cos_state'"
        echo "cos_image='$cos_image'"
        echo "cos_mode='$cos_mode'"
        echo "cos_overlay='$cos_overlay'"
        echo "cos_oemlabel='$cos_oemlabel'"
        echo "cos_persistentlabel='$cos_persistentlabel'"
    } > /tmp/cos.env
    # The modules the mount hook needs load now, while udev settles the devices (each
    # costs a few hundred milliseconds under emulation); cos-mount.sh waits for them.
    cos_modprobe=
    modprobe -qa $cos_modules </dev/null >/dev/null 2>&1 &
    cos_modprobe=$!
    root="cos:$cos_state"
    rootok=1
    wait_for_dev "$cos_state"
fi
