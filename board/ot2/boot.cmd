# A/B slot selection with a boot counter, Raspberry Pi 3 (U-Boot script).
#
# A template: board/common/render-boot-script.sh fills its placeholders (a
# NAME between two @) from board/ot2/meta, the countdown chains and legal
# counts from its BOOT_TRIES; board/common/post-image.sh turns the result into
# boot.scr with
#   mkimage -A arm -T script -C none -d boot.cmd boot.scr
# and U-Boot's bootcmd (board/ot2/uboot.fragment) runs it from the FAT
# partition.
#
# It implements the boot algorithm of docs/architecture.md with the same
# variables as the emulated board's GRUB script: BOOT_ORDER ("A B", "B A",
# "A" or "B") and BOOT_A_LEFT/BOOT_B_LEFT (tries left, 0..@BOOT_TRIES@). They live in
# @BOOT_ENV@ (primary) and @BOOT_ENV_BACKUP@ (backup) on the FAT partition, both
# in U-Boot's single-copy format (CRC32 + variables, @BOOT_ENV_SIZE@ bytes, as made by
# "mkenvimage -s @BOOT_ENV_SIZE@" and read by libubootenv). No setexpr: tries are
# counted down with test chains.
#
# Slot A is @SLOT_A_DEVICE@, slot B @SLOT_B_DEVICE@; each carries its kernel
# as /boot/vmlinuz (a link to zImage, or to an arm64 Image with /boot/initrd.img
# beside it: ci/build-pi-image.sh). The device tree is the one the firmware
# loaded and patched (config.txt overlays): ${fdt_addr}.

setenv ot2_env_addr ${pxefile_addr_r}
setenv ot2_env_size @BOOT_ENV_SIZE@

setenv ot2_defaults 'setenv BOOT_ORDER "A B"; setenv BOOT_A_LEFT @BOOT_TRIES@; setenv BOOT_B_LEFT @BOOT_TRIES@'

# ot2_valid=1 when the three variables hold legal values.
setenv ot2_check 'setenv ot2_valid 0; if test "${BOOT_ORDER}" = "A B" -o "${BOOT_ORDER}" = "B A" -o "${BOOT_ORDER}" = A -o "${BOOT_ORDER}" = B; then if test @LEFT_LEGAL_A@; then if test @LEFT_LEGAL_B@; then setenv ot2_valid 1; fi; fi; fi'

# Loads ${ot2_file}; ot2_valid=1 if its CRC and values are good. The variables are cleared
# first: one the file lacks stays empty and fails the check (env import keeps what it
# does not find).
setenv ot2_load 'setenv BOOT_ORDER; setenv BOOT_A_LEFT; setenv BOOT_B_LEFT; setenv ot2_valid 0; mw.b ${ot2_env_addr} 0 ${ot2_env_size}; if fatload @UBOOT_DEVICE@:@BOOT_PART@ ${ot2_env_addr} ${ot2_file} && env import -c ${ot2_env_addr} ${ot2_env_size} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; then run ot2_check; fi'

# First slot of BOOT_ORDER with tries left -> ot2_slot, one try counted down.
setenv ot2_pick_A 'if test -z "${ot2_slot}"; then @COUNTDOWN_A@; fi'
setenv ot2_pick_B 'if test -z "${ot2_slot}"; then @COUNTDOWN_B@; fi'
setenv ot2_pick 'setenv ot2_slot; run ot2_pick_${ot2_first}; if test -n "${ot2_second}"; then run ot2_pick_${ot2_second}; fi'

# Primary first, then the backup: one of them is whole at any time.
setenv ot2_save 'if env export -c -s ${ot2_env_size} ${ot2_env_addr} BOOT_ORDER BOOT_A_LEFT BOOT_B_LEFT; then fatwrite @UBOOT_DEVICE@:@BOOT_PART@ ${ot2_env_addr} @BOOT_ENV@ ${ot2_env_size}; fatwrite @UBOOT_DEVICE@:@BOOT_PART@ ${ot2_env_addr} @BOOT_ENV_BACKUP@ ${ot2_env_size}; fi'

# What the firmware put in the device tree it hands over (${fdt_addr}): the board's serial
# number (/serial-number, from the SoC's OTP; U-Boot's ${serial#} when absent) and its
# command line (/chosen/bootargs: cmdline.txt and the firmware's own arguments).
setenv ot2_serial ${serial#}
setenv ot2_fw_bootargs
if fdt addr ${fdt_addr}; then
	fdt get value ot2_serial / serial-number
	fdt get value ot2_fw_bootargs /chosen bootargs
fi

# Above the largest kernel (arm64 Image: 33 MiB unpacked) and below boot.scr (${scriptaddr}).
setenv kernel_addr_r 0x00200000
setenv ramdisk_addr_r 0x05100000

# Loads the slot's kernel (and its initramfs, if it has one) and boots it: booti for an
# arm64 Image, else bootz for an ARM zImage; returns only if that failed.
setenv ot2_boot 'if test "${ot2_slot}" = A; then setenv ot2_part @SLOT_A_PART@; else setenv ot2_part @SLOT_B_PART@; fi; echo "ot2: booting slot ${ot2_slot} (order ${BOOT_ORDER}, tries left A=${BOOT_A_LEFT} B=${BOOT_B_LEFT})"; setenv bootargs "root=@PART_DEVICE@${ot2_part} rootfstype=squashfs ro rootwait ot2.slot=${ot2_slot} ot2.serial=${ot2_serial} panic=5 ${ot2_fw_bootargs}"; if sqfsload @UBOOT_DEVICE@:${ot2_part} ${kernel_addr_r} /boot/vmlinuz || sqfsload @UBOOT_DEVICE@:${ot2_part} ${kernel_addr_r} /boot/zImage; then setenv ot2_initrd -; if sqfsload @UBOOT_DEVICE@:${ot2_part} ${ramdisk_addr_r} /boot/initrd.img; then setenv ot2_initrd ${ramdisk_addr_r}:${filesize}; fi; booti ${kernel_addr_r} ${ot2_initrd} ${fdt_addr} || bootz ${kernel_addr_r} ${ot2_initrd} ${fdt_addr}; fi; echo "ot2: slot ${ot2_slot} failed to load"'

# 1. The environment: primary file, else the backup, else the defaults.
setenv ot2_file @BOOT_ENV@
run ot2_load
if test "${ot2_valid}" != 1; then
	echo "ot2: @BOOT_ENV@ missing or invalid, trying @BOOT_ENV_BACKUP@"
	setenv ot2_file @BOOT_ENV_BACKUP@
	run ot2_load
fi
if test "${ot2_valid}" != 1; then
	echo "ot2: no valid environment, using the defaults"
	run ot2_defaults
fi

if test "${BOOT_ORDER}" = "A B"; then
	setenv ot2_first A
	setenv ot2_second B
elif test "${BOOT_ORDER}" = "B A"; then
	setenv ot2_first B
	setenv ot2_second A
elif test "${BOOT_ORDER}" = A; then
	setenv ot2_first A
	setenv ot2_second
else
	setenv ot2_first B
	setenv ot2_second
fi

# 2. The first listed slot with tries left.
run ot2_pick

# 3. None: every listed slot gets @BOOT_TRIES@ tries again, the first is chosen.
if test -z "${ot2_slot}"; then
	echo "ot2: no slot has tries left, giving every listed slot @BOOT_TRIES@ again"
	if test "${ot2_first}" = A -o "${ot2_second}" = A; then
		setenv BOOT_A_LEFT @BOOT_TRIES@
	fi
	if test "${ot2_first}" = B -o "${ot2_second}" = B; then
		setenv BOOT_B_LEFT @BOOT_TRIES@
	fi
	run ot2_pick
fi

# 4. Save, then boot.
run ot2_save
run ot2_boot

# The chosen slot did not load: it gets no more tries; boot the next one.
if test "${ot2_slot}" = A; then
	setenv BOOT_A_LEFT 0
else
	setenv BOOT_B_LEFT 0
fi
run ot2_pick
run ot2_save
if test -n "${ot2_slot}"; then
	run ot2_boot
fi
echo "ot2: no bootable slot, resetting in 5 s"
sleep 5
reset
