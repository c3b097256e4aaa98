#!/bin/sh
# Post-image step shared by both boards and both ways of producing the base.
# Usage: post-image.sh BINARIES_DIR BOARD   (BOARD: ot2 | qemu)
# Puts the bootloader's script and initial environment beside the built binaries,
# then genimage assembles board/BOARD/genimage.cfg into BINARIES_DIR/disk.img.
set -eu

binaries=$1
board=$2
boarddir=$(cd "$(dirname "$0")/../$board" && pwd)

case "$board" in
qemu)
	cp "$boarddir/grub.cfg" "$binaries/grub.cfg"
	rm -f "$binaries/grubenv"
	grub-editenv "$binaries/grubenv" create
	grub-editenv "$binaries/grubenv" set "BOOT_ORDER=A B" BOOT_A_LEFT=3 BOOT_B_LEFT=3
	;;
ot2)
	mkimage -A arm -T script -C none -d "$boarddir/boot.cmd" "$binaries/boot.scr"
	mkenvimage -s 0x4000 -o "$binaries/uboot.env" "$boarddir/uboot-env.txt"
	cp "$boarddir/config.txt" "$boarddir/cmdline.txt" "$binaries/"
	;;
*)
	echo "post-image.sh: unknown board '$board'" >&2
	exit 1
	;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root"
genimage --rootpath "$work/root" --tmppath "$work/tmp" \
	--inputpath "$binaries" --outputpath "$binaries" \
	--config "$boarddir/genimage.cfg"
