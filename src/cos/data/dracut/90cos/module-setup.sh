#!/bin/bash
# dracut module "cos": mounts the selected snapshot image read-only as the root
# filesystem and lets the snapshot's own `cos mount` apply the writable layout.

check() {
    # Only when asked for (cos init writes add_dracutmodules+=" cos ").
    return 255
}

depends() {
    echo rootfs-block
}

installkernel() {
    hostonly='' instmods loop squashfs overlay erofs ext4 vfat nls_cp437 nls_iso8859_1 \
        virtio_blk virtio_scsi virtio_pci sd_mod sr_mod cdrom isofs nvme ahci
}

install() {
    inst_multiple mount umount losetup blkid chroot mkdir modprobe readlink \
        cp mv rm sync sleep grep sed
    # The layout in shell and its stage check (installed by cos init before the initrd
    # is built), and getfattr for a stack of layers: run in the initrd on the new root.
    inst_multiple -o /usr/libexec/cos-layout /usr/libexec/cos-stage-wanted \
        /usr/libexec/cos-trial-pending getfattr
    inst_hook cmdline 96 "$moddir/cos-parse.sh"
    inst_hook mount 10 "$moddir/cos-mount.sh"
}
