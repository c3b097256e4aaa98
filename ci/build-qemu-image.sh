#!/bin/bash
# Offline build of the QEMU board's image from Debian packages: the Debian base root
# (ci/build-base.sh), then the same overlay, post-build and post-image scripts as the
# Buildroot build, the two Python projects, squashfs, genimage, and a signed bundle.
#
# Usage: ci/build-qemu-image.sh [--version V] [--fault robot-server] [--no-jupyter] [--out DIR]
# --no-jupyter (or OT2_JUPYTER=0) leaves Jupyter (ci/jupyter-packages.txt) out of the image.
# Prints the output directory (holding disk.img, rootfs.squashfs, rootfs.bundle) on its
# last line. Results are cached in $OT2_CACHE (default ~/.cache/ot2) keyed by a hash of
# every input, so a second run with the same inputs takes a second (ci/cache.sh).
set -euo pipefail

tree=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=ci/cache.sh
. "$tree/ci/cache.sh"
begin_build build-qemu-image qemu "$@"
ensure_base amd64
ensure_wheels x86_64

# The root filesystem before its version is stamped: shared by every image of this tree.
root_key=$( (echo "$base_key $wheels_key"; project_sources ci/build-qemu-image.sh ci/make-grub-efi.sh board/qemu) | hash_of)
rootfs=$cache/root-$root_key.tar
image_key=$( (echo "$root_key $version $fault"; cat "$keys/dev.pem") | hash_of)
result=$cache/image-$image_key
cached && exit 0
start_work
mkdir -p "$binaries/efi-part/EFI/BOOT"

# The root filesystem: the base with only the kernel modules a virtio machine needs, and
# those of lab equipment on USB: the host controllers QEMU emulates (xhci, ehci), USB
# drives (usb-storage, uas, sd_mod; FAT, exFAT, ext4) and serial adapters (FTDI, CP210x,
# PL2303, CDC-ACM).
ensure_root virtio_blk virtio_pci virtio_net virtio_console virtio_rng squashfs ext4 vfat \
	nls_cp437 nls_ascii nls_iso8859-1 nls_utf8 autofs4 binfmt_misc loop af_packet ipv6 crc32c_generic \
	xhci_pci ehci_pci uhci_hcd usb_storage uas sd_mod exfat usbserial ftdi_sio cp210x pl2303 cdc_acm

start=$(date +%s)
stamp_root

log "making the GRUB EFI binary"
"$tree/ci/make-grub-efi.sh" "$binaries/efi-part/EFI/BOOT/bootx64.efi"

log "assembling the disk image"
"$tree/board/common/post-image.sh" "$binaries" qemu
# shellcheck disable=SC2119 # no files beyond the image, squashfs and bundle
store_result
