#!/bin/sh
# Post-image step shared by both boards and both ways of producing the base.
# Usage: post-image.sh BINARIES_DIR BOARD   (BOARD: ot2 | qemu)
# Puts the bootloader's script and initial environment beside the built binaries,
# then genimage assembles board/BOARD/genimage.cfg into BINARIES_DIR/disk.img (QEMU board)
# or BINARIES_DIR/sdcard.img (Pi), and writes beside it the image's block map
# (<image>.bmap, `bmaptool create`: flash with `bmaptool copy` or `ot2 flash`, which write
# only the mapped blocks) and its SHA-256 (<image>.sha256, `sha256sum -c` format).
# OT2_GENIMAGE_CFG names another genimage configuration (ci/build-pi-image.sh: the Pi's
# without the firmware files Debian does not ship).
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
	--config "${OT2_GENIMAGE_CFG:-$boarddir/genimage.cfg}"

case "$board" in
qemu) image=disk.img ;;
ot2) image=sdcard.img ;;
esac
if ! command -v bmaptool >/dev/null 2>&1; then
	echo "post-image.sh: bmaptool not found (Debian: bmap-tools; Buildroot: BR2_PACKAGE_HOST_BMAP_TOOLS)" >&2
	exit 1
fi
rm -f "$binaries/$image.bmap" "$binaries/$image.sha256"
bmaptool create -o "$binaries/$image.bmap.tmp" "$binaries/$image"
mv "$binaries/$image.bmap.tmp" "$binaries/$image.bmap"
(cd "$binaries" && sha256sum "$image" > "$image.sha256.tmp" && mv "$image.sha256.tmp" "$image.sha256")
