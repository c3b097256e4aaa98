#!/bin/sh
# Installs the Debian packages that the offline image build, QEMU and the tests need.
set -eu
packages="qemu-system-x86 qemu-system-arm ovmf grub-efi-amd64-bin grub-common mmdebstrap genimage
squashfs-tools dosfstools mtools e2fsprogs fdisk u-boot-tools u-boot-qemu libubootenv-tool bmap-tools
openssh-client python3-venv shellcheck cpio openssl
qemu-user-static binfmt-support device-tree-compiler dpkg-dev
gcc-aarch64-linux-gnu make bison flex bc libssl-dev libgnutls28-dev python3-setuptools swig python3-dev"
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
# The Pi's U-Boot is built from Debian's own source package: source lines beside the binary ones.
if ! apt-cache showsrc u-boot 2>/dev/null | grep -q '^Version:'; then
	for list in /etc/apt/sources.list.d/*.sources; do
		[ -e "$list" ] || continue   # no file matched
		grep -q '^Types: deb-src' "$list" && continue
		sed 's/^Types: deb$/Types: deb-src/' "$list" > "${list%.sources}-src.sources"
	done
	# The one-line format's sources (a host without .sources files).
	if grep -qs '^deb ' /etc/apt/sources.list; then
		sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/ot2-src.list
	fi
	apt-get update -qq
fi
# The arm64 base runs its maintainer scripts under qemu-user: binfmt must be on (a
# container may have neither binfmt_misc mounted nor the entry enabled).
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
	mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
	update-binfmts --enable qemu-aarch64
fi
