#!/bin/sh
# Installs the Debian packages that the offline image build, QEMU and the tests need.
set -eu
packages="qemu-system-x86 qemu-system-arm ovmf grub-efi-amd64-bin grub-common mmdebstrap genimage
squashfs-tools dosfstools mtools e2fsprogs fdisk u-boot-tools u-boot-qemu libubootenv-tool bmap-tools
openssh-client python3-venv shellcheck"
missing=""
for p in $packages; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "installing:$missing"
	apt-get update -qq
	# shellcheck disable=SC2086 # $missing is a list of package names
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
