################################################################################
#
# buildroot: the pinned Buildroot release that builds this external tree
#
################################################################################

# Included by the top-level Makefile:
#   make ot2        Raspberry Pi 3 image: build/ot2/images/sdcard.img
#   make qemu-ot2   emulated board image: build/qemu-ot2/images/disk.img
#   make br-check   defconfigs resolve, check-package is clean (offline)
# Both builds need the network (Buildroot downloads every source) and
# OT2_KEYRING_DIR, a directory of *.pem bundle-signing public keys, for
# board/common/post-build.sh. BUILDROOT_SRC= builds with, or checks against,
# an existing Buildroot source tree instead of the downloaded release.

# 2026.02 is Buildroot's long-term support release line (one year of fixes).
BUILDROOT_VERSION = 2026.02.3
# From the release's PGP-signed buildroot-2026.02.3.tar.xz.sign.
BUILDROOT_SHA256 = 5a59e7501b0b4ec52c41f4bfa79412320e0b37eae5f719605a258e8d0c6fc7fb
BUILDROOT_SOURCE = buildroot-$(BUILDROOT_VERSION).tar.xz
BUILDROOT_SITE = https://buildroot.org/downloads
BUILDROOT_BUILD_DIR = $(CURDIR)/build
BUILDROOT_SRC ?= $(BUILDROOT_BUILD_DIR)/buildroot-$(BUILDROOT_VERSION)
BUILDROOT_MAKE = $(MAKE) -C $(BUILDROOT_SRC) BR2_EXTERNAL=$(CURDIR)

export OT2_KEYRING_DIR

$(BUILDROOT_BUILD_DIR)/$(BUILDROOT_SOURCE):
	mkdir -p $(BUILDROOT_BUILD_DIR)
	wget -O $@.part $(BUILDROOT_SITE)/$(BUILDROOT_SOURCE)
	echo "$(BUILDROOT_SHA256)  $@.part" | sha256sum -c -
	mv $@.part $@

$(BUILDROOT_BUILD_DIR)/buildroot-$(BUILDROOT_VERSION)/Makefile: | $(BUILDROOT_BUILD_DIR)/$(BUILDROOT_SOURCE)
	tar -xJf $(BUILDROOT_BUILD_DIR)/$(BUILDROOT_SOURCE) -C $(BUILDROOT_BUILD_DIR)
	touch $@

.PHONY: buildroot-src
buildroot-src: $(BUILDROOT_SRC)/Makefile

.PHONY: ot2
ot2: buildroot-src
	$(BUILDROOT_MAKE) O=$(BUILDROOT_BUILD_DIR)/ot2 ot2_defconfig
	$(BUILDROOT_MAKE) O=$(BUILDROOT_BUILD_DIR)/ot2

.PHONY: qemu-ot2
qemu-ot2: buildroot-src
	$(BUILDROOT_MAKE) O=$(BUILDROOT_BUILD_DIR)/qemu-ot2 qemu_ot2_defconfig
	$(BUILDROOT_MAKE) O=$(BUILDROOT_BUILD_DIR)/qemu-ot2

# The files of this tree that utils/check-package knows how to check.
BUILDROOT_CHECK_FILES = \
	Config.in external.desc external.mk \
	$(wildcard configs/*_defconfig) \
	$(shell find package board overlay -type f 2>/dev/null) \
	$(wildcard mk/*.mk mk/*.py tests/*.py)

.PHONY: br-check
br-check: buildroot-src
	python3 mk/check-defconfig.py $(BUILDROOT_SRC)
	cd $(BUILDROOT_SRC) && ./utils/check-package -b \
		$(addprefix $(CURDIR)/,$(BUILDROOT_CHECK_FILES))
