#!/bin/bash
# Boots a disk image of either board under software emulation (TCG).
# Usage: ci/qemu-run.sh DISK.img [CONSOLE_LOG]
# A guest reboot ends QEMU (-no-reboot): whoever started it powers it on again, a cold
# start like the Pi's reset. (OVMF was seen to hang now and then on a warm reset under
# TCG.) The console log is appended to, so it holds every boot.
# Environment (host ports on 127.0.0.1 forwarded to the guest):
#   OT2_PORT_UPDATE (34000)  OT2_PORT_ROBOT (31950)  OT2_PORT_BRIDGE (7887)  OT2_PORT_SSH (2222)
#   OT2_PORT_JUPYTER (48888)
#   OT2_UART_PORT    host TCP port of the Smoothieware emulator the guest's motor-board UART
#                    is wired to (QEMU connects to it and reconnects if it goes away); unset: none
#   OT2_ROBOT_ALIAS  a loopback address whose port 31950 is also forwarded to the robot
#                    server (for OT-2 API clients that always use 31950); unset: none
#   OT2_BOARD        qemu (default): x86_64 PC, OVMF, GRUB; the UART is /dev/ttyS1.
#                    ot2: Raspberry Pi 3 (raspi3b), U-Boot; the UART is the PL011, /dev/ttyAMA0.
#   OT2_QEMU_MEM     guest memory in MiB (1024; the raspi3b has 1024 and nothing else)
#   OT2_QEMU_SMP     qemu: virtual CPUs, each a host thread (2: a cold boot is CPU-bound, the
#                    servers, the analysis worker and Jupyter start at once; the Pi has four)
#   OT2_TCG_THREAD   ot2: multi (default; each of the raspi3b's four cores a host thread) or
#                    single (all four on one host thread: at most one host core busy)
#   OT2_SERIAL       qemu: the board's serial number (SMBIOS system serial; GRUB passes it to
#                    Linux as ot2.serial=); unset: none
#   OT2_UBOOT, OT2_DTB  ot2: U-Boot and the device tree QEMU hands it, as the Pi's firmware
#                    would (the harness puts the serial number in the DTB: ci/ot2qemu.py)
#   OT2_QTEST        ot2: a unix socket the harness listens on for QEMU's qtest protocol
#                    (drives the GPIO inputs); unset: none
#   OT2_KERNEL, OT2_INITRD, OT2_APPEND  a bare direct-kernel boot (`make bench-boot`): QEMU
#                    loads this kernel and initramfs with this command line itself, in place
#                    of the board's firmware and bootloader (OVMF and GRUB; U-Boot)
# Lab equipment on the guest's USB (qemu board; an xHCI controller is added for them):
#   OT2_USB_DRIVES   space-separated raw disk images, each a USB stick (usb-storage) with
#                    QEMU id usbstick0, usbstick1, ... (device_del over QMP pulls it)
#   OT2_USB_SERIAL   a host tty (e.g. a pty's /dev/pts/N) wired to a USB serial adapter
#                    (QEMU's usb-serial, an FTDI FT232: the guest's /dev/ttyUSB0)
#   OT2_QMP          path of a QMP unix socket to create (device_del, ...); unset: none
set -euo pipefail
disk=$1
console=${2:-/dev/stdout}
fwd="hostfwd=tcp:127.0.0.1:${OT2_PORT_UPDATE:-34000}-:34000"
fwd="$fwd,hostfwd=tcp:127.0.0.1:${OT2_PORT_ROBOT:-31950}-:31950"
fwd="$fwd,hostfwd=tcp:127.0.0.1:${OT2_PORT_BRIDGE:-7887}-:7887"
fwd="$fwd,hostfwd=tcp:127.0.0.1:${OT2_PORT_SSH:-2222}-:22"
fwd="$fwd,hostfwd=tcp:127.0.0.1:${OT2_PORT_JUPYTER:-48888}-:48888"
if [ -n "${OT2_ROBOT_ALIAS:-}" ]; then
	fwd="$fwd,hostfwd=tcp:$OT2_ROBOT_ALIAS:31950-:31950"
fi
if [ -n "${OT2_UART_PORT:-}" ]; then
	uart=(-chardev "socket,id=motorboard,host=127.0.0.1,port=$OT2_UART_PORT,reconnect=1"
		-serial chardev:motorboard)
else
	uart=(-serial null)
fi
console_dev=(-chardev "file,id=console,path=$console,append=on")

if [ "${OT2_BOARD:-qemu}" = ot2 ]; then
	qtest=()
	if [ -n "${OT2_QTEST:-}" ]; then
		qtest=(-qtest "unix:$OT2_QTEST" -qtest-log /dev/null)
	fi
	# First -serial: the PL011 (ttyAMA0, the motor board); second: the mini UART (ttyS1,
	# the console, named on the command line the "firmware" gives: -append). The network
	# is a USB-Ethernet link with link-local addresses, as the OT-2's USB cable: the host
	# (forwarded ports) is 169.254.94.1 to the guest.
	boot=(-kernel "$OT2_UBOOT" -append "console=ttyS1,115200")
	if [ -n "${OT2_KERNEL:-}" ]; then
		boot=(-kernel "$OT2_KERNEL" -initrd "$OT2_INITRD" -append "$OT2_APPEND")
	fi
	exec qemu-system-aarch64 -M raspi3b -m "${OT2_QEMU_MEM:-1024}" -accel "tcg,thread=${OT2_TCG_THREAD:-multi}" -no-reboot \
		"${boot[@]}" -dtb "$OT2_DTB" \
		-drive "file=$disk,if=sd,format=raw" \
		-netdev "user,id=net0,net=169.254.0.0/16,host=169.254.94.1,dhcpstart=169.254.94.15,$fwd" \
		-device usb-net,netdev=net0 \
		-display none -monitor none "${uart[@]}" "${console_dev[@]}" -serial chardev:console "${qtest[@]}"
fi

smbios=()
if [ -n "${OT2_SERIAL:-}" ]; then
	smbios=(-smbios "type=1,serial=$OT2_SERIAL")
fi
usb=()
if [ -n "${OT2_USB_DRIVES:-}${OT2_USB_SERIAL:-}" ]; then
	usb=(-device "qemu-xhci,id=xhci")
	n=0
	for stick in ${OT2_USB_DRIVES:-}; do
		usb+=(-drive "if=none,id=usbdrive$n,format=raw,file=$stick"
			-device "usb-storage,bus=xhci.0,drive=usbdrive$n,id=usbstick$n")
		n=$((n + 1))
	done
	if [ -n "${OT2_USB_SERIAL:-}" ]; then
		usb+=(-chardev "serial,id=usbserial,path=$OT2_USB_SERIAL" -device "usb-serial,bus=xhci.0,chardev=usbserial")
	fi
fi
qmp=()
if [ -n "${OT2_QMP:-}" ]; then
	qmp=(-qmp "unix:$OT2_QMP,server=on,wait=off")
fi
boot=(-bios /usr/share/ovmf/OVMF.fd)
if [ -n "${OT2_KERNEL:-}" ]; then
	boot=(-kernel "$OT2_KERNEL" -initrd "$OT2_INITRD" -append "$OT2_APPEND")
fi
exec qemu-system-x86_64 -m "${OT2_QEMU_MEM:-1024}" -smp "${OT2_QEMU_SMP:-2}" -accel tcg,thread=multi \
	-no-reboot \
	"${boot[@]}" \
	-drive "file=$disk,if=virtio,format=raw" \
	-netdev "user,id=net0,$fwd" -device virtio-net-pci,netdev=net0 \
	-display none -monitor none \
	"${console_dev[@]}" -serial chardev:console "${uart[@]}" "${smbios[@]}" "${usb[@]}" "${qmp[@]}"
