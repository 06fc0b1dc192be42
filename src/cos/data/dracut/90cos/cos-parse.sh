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
    cos_overlay=$(getarg cos.overlay=)
    [ -n "$cos_overlay" ] || cos_overlay=tmpfs:25%
    case "$root" in
        block:*) cos_state=${root#block:} ;;
        *) cos_state=$(label_uuid_to_dev "$(getarg root=)") ;;
    esac
    {
        echo "cos_state='$cos_state'"
        echo "cos_image='$cos_image'"
        echo "cos_mode='$cos_mode'"
        echo "cos_overlay='$cos_overlay'"
    } > /tmp/cos.env
    root="cos:$cos_state"
    rootok=1
    wait_for_dev "$cos_state"
    wait_for_dev "/dev/disk/by-label/$cos_oemlabel"
fi
