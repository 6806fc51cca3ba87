#!/bin/sh
# The second half of `make demo`: the machine's userspace under `khofs run --boots 2`, with
# the system's kexec. Boot 1 finalizes and kexecs into IMAGE; boot 2 shows what came in.
set -eu
image=$1
kho=/sys/kernel/debug/kho
show() { printf '\n\033[1m[boot %s]$ %s\033[0m\n' "$boot" "$*"; eval "$*"; }

if [ ! -d $kho/in ]; then
    boot=1
    show cat /proc/cmdline
    show "echo 1 > $kho/out/finalize"
    show "kexec -s -l $image --reuse-cmdline"
    show cat /sys/kernel/kexec_loaded
    show kexec -e
fi
boot=2
show cat /proc/cmdline
show ls -l $kho/in $kho/in/sub_fdts
show dtc -I dtb -O dts $kho/in/sub_fdts/demo
show "dmesg | grep -E 'KHO|kexec'"
