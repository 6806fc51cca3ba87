#!/bin/sh
# The KHO flow of the kernel's admin guide (Documentation/admin-guide/mm/kho.rst), as a user
# types it on a KHO kernel, with the system's kexec. It runs at every boot, as a machine's
# userspace does: the first boot finalizes and kexecs, the next one shows what came in.
# Run it unmodified under khofs:
#     khofs run --boots 2 --producers PRODUCERS.toml -- sh kho-admin-guide.sh IMAGE [INITRD]
set -eu
image=$1
initrd=${2:-}
dbg=/sys/kernel/debug/kho

if [ -d "$dbg/in" ]; then
    echo "next kernel:"
    dtc -I dtb -O dts "$dbg/in/fdt"
    for f in "$dbg"/in/sub_fdts/*; do
        [ -e "$f" ] || continue
        echo "sub-tree ${f##*/}:"
        dtc -I dtb -O dts "$f"
    done
    exit 0
fi
echo "scratch areas:"; paste "$dbg/out/scratch_phys" "$dbg/out/scratch_len"
echo 1 > "$dbg/out/finalize"
echo "finalized: $(cat "$dbg/out/finalize")"
dtc -I dtb -O dts "$dbg/out/fdt"
if [ -n "$initrd" ]; then
    kexec -l "$image" --initrd="$initrd" -s --reuse-cmdline
else
    kexec -l "$image" -s --reuse-cmdline
fi
kexec -e
