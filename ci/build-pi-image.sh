#!/bin/bash
# Offline build of the Raspberry Pi 3 board's image (board/ot2) from Debian packages, for
# arm64: the Debian arm64 base root (ci/build-base.sh under qemu-user-static), the same
# overlay, post-build and post-image scripts as the Buildroot build, the two Python
# projects and the engine's aarch64 wheels, squashfs slots, boot.scr and uboot.env (+ backup),
# and U-Boot built from Debian's u-boot source with board/ot2/uboot.fragment, the fragment
# the Buildroot defconfig merges too.
#
# Usage: ci/build-pi-image.sh [--version V] [--fault robot-server] [--no-jupyter] [--out DIR]
# Prints the output directory on its last line: sdcard.img (+ .bmap, .sha256),
# rootfs.squashfs, rootfs.bundle, and what QEMU's raspi3b loads itself in place of the
# Pi's firmware: u-boot.bin and the kernel's bcm2837-rpi-3-b.dtb. Cached in $OT2_CACHE by
# a hash of every input, as ci/build-qemu-image.sh (ci/cache.sh).
set -euo pipefail

tree=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=ci/cache.sh
. "$tree/ci/cache.sh"
# Jupyter is left out unless OT2_JUPYTER=1: its packages' maintainer scripts run under
# qemu-user and would lengthen the arm64 base's build by minutes; the QEMU board's image
# carries and tests it.
OT2_JUPYTER=${OT2_JUPYTER:-0} begin_build build-pi-image ot2 "$@"

# U-Boot: Debian's source (its patches applied), rpi_arm64_defconfig + board/ot2/uboot.fragment.
uboot_version=$(apt-cache showsrc u-boot | awk '/^Version:/ {print $2; exit}')
uboot_key=$( (echo "$uboot_version"; cat "$tree/board/ot2/uboot.fragment") | hash_of)
uboot=$cache/uboot-$uboot_key
if [ ! -s "$uboot/u-boot.bin" ]; then
	log "building U-Boot $uboot_version ($uboot)"
	start=$(date +%s)
	rm -rf "$uboot.tmp"
	mkdir -p "$uboot.tmp/src"
	(cd "$uboot.tmp/src" && apt-get source -qq "u-boot=$uboot_version" >/dev/null 2>&1)
	src=$(echo "$uboot.tmp"/src/u-boot-*/)
	o=$uboot.tmp/build
	export CROSS_COMPILE=aarch64-linux-gnu- ARCH=arm
	make -s -C "$src" O="$o" rpi_arm64_defconfig
	"$src/scripts/kconfig/merge_config.sh" -m -O "$o" "$o/.config" "$tree/board/ot2/uboot.fragment" >/dev/null
	make -s -C "$src" O="$o" olddefconfig
	# Every setting of the fragment must have taken (Kconfig drops what it cannot satisfy).
	grep -E '^(CONFIG_|# CONFIG_)' "$tree/board/ot2/uboot.fragment" | while read -r line; do
		grep -qxF "$line" "$o/.config" || { echo "U-Boot config lacks: $line" >&2; exit 1; }
	done
	make -s -C "$src" O="$o" -j"$(nproc)" u-boot.bin
	cp "$o/u-boot.bin" "$o/.config" "$uboot.tmp/"
	rm -rf "$uboot.tmp/src" "$o"
	rm -rf "$uboot"
	mv "$uboot.tmp" "$uboot"
	timed "U-Boot $uboot_version" "$start"
fi

ensure_base arm64
ensure_wheels aarch64

# The root filesystem before its version is stamped: shared by every image of this tree.
root_key=$( (echo "$base_key $wheels_key"; project_sources ci/build-pi-image.sh board/ot2) | hash_of)
rootfs=$cache/root-pi-$root_key.tar
image_key=$( (echo "$root_key $uboot_key $version $fault"; cat "$keys/dev.pem") | hash_of)
result=$cache/image-pi-$image_key
cached && exit 0
start_work

# The Pi 3's devices: SD card (bcm2835 sdhost, sdhci-iproc), USB (dwc2) with the LAN9514's
# smsc95xx and USB-Ethernet gadgets' cdc_ether/rndis_host, the watchdog (reboot, power off).
ensure_root squashfs ext4 vfat nls_cp437 nls_ascii nls_iso8859-1 nls_utf8 autofs4 loop af_packet \
	ipv6 crc32c_generic binfmt_misc bcm2835 sdhci-iproc dwc2 smsc95xx cdc_ether rndis_host bcm2835_wdt bcm2835-rng \
	usb_storage uas sd_mod exfat usbserial ftdi_sio cp210x pl2303 cdc_acm

start=$(date +%s)
stamp_root

cp "$uboot/u-boot.bin" "$binaries/"
cp "$root"/usr/lib/linux-image-*/broadcom/bcm2837-rpi-3-b.dtb "$binaries/"
log "assembling the SD-card image"
# Without the VideoCore firmware and the Raspberry Pi kernel's DTBs of the Buildroot build
# (Debian ships neither; QEMU does not run the firmware stage).
grep -v -e '"rpi-firmware/' -e '"bcm2710-' "$tree/board/ot2/genimage.cfg" > "$work/genimage.cfg"
OT2_GENIMAGE_CFG=$work/genimage.cfg "$tree/board/common/post-image.sh" "$binaries" ot2
store_result u-boot.bin bcm2837-rpi-3-b.dtb
