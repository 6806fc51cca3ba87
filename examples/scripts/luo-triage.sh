#!/bin/sh
# What a live-update triage script does with debugfs: keep a copy of the outgoing handover,
# kexec into the next kernel reusing the command line, and in that kernel keep a copy of what
# arrived and compare. It runs at every boot; OUTDIR, on disk, outlives the kexec.
#     khofs run --boots 2 --producers PRODUCERS.toml -- sh luo-triage.sh IMAGE OUTDIR
set -eu
image=$1
out=$2
dbg=/sys/kernel/debug/kho

if [ ! -d "$dbg/in" ]; then
    mkdir -p "$out"
    echo 1 > "$dbg/out/finalize"
    cp -a "$dbg/out" "$out/before"
    kexec -l -s --reuse-cmdline "$image"
    kexec -e
fi
cp -a "$dbg/in" "$out/after"
cmp "$out/before/fdt" "$out/after/fdt"
for f in "$out"/before/sub_fdts/*; do
    [ -e "$f" ] || continue
    cmp "$f" "$out/after/sub_fdts/${f##*/}"
done
echo "handover intact: $(ls "$out/after/sub_fdts" | tr '\n' ' ')"
