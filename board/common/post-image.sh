#!/bin/sh
# Post-image step shared by every board and both ways of producing the base.
# Usage: post-image.sh BINARIES_DIR BOARD   (BOARD: a folder of board/ with a meta file)
# Renders the board's bootloader script and initial environment from board/BOARD/meta
# into BINARIES_DIR, then genimage assembles board/BOARD/genimage.cfg (the boot partition)
# and board/common/genimage.cfg (data image, partition table) into BINARIES_DIR/IMAGE_NAME,
# and writes beside it the image's block map (<image>.bmap, `bmaptool create`: flash with
# `bmaptool copy` or `ot2 flash`, which write only the mapped blocks) and its SHA-256
# (<image>.sha256, `sha256sum -c` format).
# OT2_GENIMAGE_CFG names another template in place of board/BOARD/genimage.cfg
# (ci/build-pi-image.sh: the Pi's without the firmware files Debian does not ship).
set -eu

binaries=$1
# shellcheck source=board/common/meta.sh
. "$(dirname "$0")/meta.sh"
load_meta "$2"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

render_boot_script() { "$(dirname "$0")/render-boot-script.sh" "$BOARD" "$1"; }
case "$BOOTLOADER" in
grub)
	render_boot_script "$binaries/grub.cfg"
	rm -f "$binaries/$BOOT_ENV"
	grub-editenv "$binaries/$BOOT_ENV" create
	grub-editenv "$binaries/$BOOT_ENV" set "BOOT_ORDER=A B" "BOOT_A_LEFT=$BOOT_TRIES" "BOOT_B_LEFT=$BOOT_TRIES"
	;;
uboot)
	render_boot_script "$work/boot.cmd"
	mkimage -A arm -T script -C none -d "$work/boot.cmd" "$binaries/boot.scr"
	printf 'BOOT_ORDER=A B\nBOOT_A_LEFT=%s\nBOOT_B_LEFT=%s\n' "$BOOT_TRIES" "$BOOT_TRIES" > "$work/uboot-env.txt"
	mkenvimage -s "$BOOT_ENV_SIZE" -o "$binaries/$BOOT_ENV" "$work/uboot-env.txt"
	cp "$BOARD_DIR/config.txt" "$BOARD_DIR/cmdline.txt" "$binaries/"
	;;
esac

render "${OT2_GENIMAGE_CFG:-$BOARD_DIR/genimage.cfg}" "$work/genimage.cfg"
render "$(dirname "$0")/genimage.cfg" "$work/genimage-common.cfg"
cat "$work/genimage-common.cfg" >> "$work/genimage.cfg"
mkdir -p "$work/root"
genimage --rootpath "$work/root" --tmppath "$work/tmp" \
	--inputpath "$binaries" --outputpath "$binaries" \
	--config "$work/genimage.cfg"

image=$IMAGE_NAME
if ! command -v bmaptool >/dev/null 2>&1; then
	echo "post-image.sh: bmaptool not found (Debian: bmap-tools; Buildroot: BR2_PACKAGE_HOST_BMAP_TOOLS)" >&2
	exit 1
fi
rm -f "$binaries/$image.bmap" "$binaries/$image.sha256"
bmaptool create -o "$binaries/$image.bmap.tmp" "$binaries/$image"
mv "$binaries/$image.bmap.tmp" "$binaries/$image.bmap"
(cd "$binaries" && sha256sum "$image" > "$image.sha256.tmp" && mv "$image.sha256.tmp" "$image.sha256")
