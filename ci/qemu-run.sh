#!/bin/bash
# Boots a disk image of the QEMU board under software emulation (TCG).
# Usage: ci/qemu-run.sh DISK.img [CONSOLE_LOG]
# A guest reboot ends QEMU (-no-reboot): whoever started it powers it on again, a cold
# start like the Pi's reset. (OVMF was seen to hang now and then on a warm reset under
# TCG.) The console log is appended to, so it holds every boot.
# Environment (host ports on 127.0.0.1 forwarded to the guest):
#   OT2_PORT_UPDATE (34000)  OT2_PORT_ROBOT (31950)  OT2_PORT_BRIDGE (7887)  OT2_PORT_SSH (2222)
#   OT2_PORT_JUPYTER (48888)
#   OT2_UART_PORT    host TCP port of the Smoothieware emulator the guest's /dev/ttyS1 is
#                    wired to (QEMU connects to it and reconnects if it goes away); unset: none
#   OT2_ROBOT_ALIAS  a loopback address whose port 31950 is also forwarded to the robot
#                    server (for OT-2 API clients that always use 31950); unset: none
#   OT2_QEMU_MEM     guest memory in MiB (1024)
#   OT2_SERIAL       the board's serial number (SMBIOS system serial; GRUB passes it to
#                    Linux as ot2.serial=); unset: none
# Lab equipment on the guest's USB (an xHCI controller is added when any is given):
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
exec qemu-system-x86_64 -m "${OT2_QEMU_MEM:-1024}" -smp 1 -no-reboot \
	-bios /usr/share/ovmf/OVMF.fd \
	-drive "file=$disk,if=virtio,format=raw" \
	-netdev "user,id=net0,$fwd" -device virtio-net-pci,netdev=net0 \
	-display none -monitor none \
	-chardev "file,id=console,path=$console,append=on" -serial chardev:console "${uart[@]}" "${smbios[@]}" "${usb[@]}" "${qmp[@]}"
