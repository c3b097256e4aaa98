#!/bin/sh
# Makes the QEMU board's GRUB EFI binary (grub-efi-amd64-bin's modules): it reads its
# config from /EFI/BOOT/grub.cfg on the partition it was loaded from.
# Usage: ci/make-grub-efi.sh OUTPUT   (used by ci/build-qemu-image.sh and tests/test_bootloaders.py)
set -eu
grub-mkimage -O x86_64-efi -p /EFI/BOOT -o "$1" \
	part_msdos fat squash4 ext2 normal linux loadenv test echo configfile search \
	regexp reboot sleep smbios gzio xzio efi_gop all_video
