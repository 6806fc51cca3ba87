#!/usr/bin/env bash
# `make demo`: a short walk through a fresh khofs mount, each command printed before its output.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mnt=$(mktemp -d "${TMPDIR:-/tmp}/khofs-demo.XXXXXX")
cleanup() {
  cd /
  if grep -q " $mnt " /proc/mounts; then khofs umount "$mnt" >/dev/null 2>&1 || true; fi
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
# A signal's default action would end the script without its EXIT trap: `make demo | head`
# (SIGPIPE once head has gone), Ctrl-C, kill, a closed terminal. Exit through the trap.
trap 'exit 141' PIPE
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

run() { printf '\n\033[1m$ %s\033[0m\n' "$*" 2>/dev/null || exit 141; eval "$*"; }

run khofs mount "$mnt" --producers "$here/examples/demo/producers.toml"
cd "$mnt"
run ls -l kho/out
run cat kho/out/scratch_phys
run cat kho/out/scratch_len
run cat kho/out/finalize
run "echo 1 > kho/out/finalize"
run cat kho/out/finalize
run ls -l kho/out kho/out/sub_fdts
run dtc -I dtb -O dts kho/out/fdt
run dtc -I dtb -O dts kho/out/sub_fdts/demo
run "echo 0 > kho/out/finalize"
run ls kho/out kho/out/sub_fdts
cd /
run khofs umount "$mnt"

# The kexec, with the system's kexec, runs inside `khofs run`: there the machine it loads and
# reboots is the emulated one (never run the real `kexec -e` outside it).
image=/boot/vmlinuz-$(uname -r)
if [ ! -r "$image" ]; then
  # no kernel of ours to read: a bzImage header that passes the probes will do (it never runs)
  image=$mnt.bzImage
  python3 "$here/examples/bzimage.py" "$image"
fi
run khofs run --boots 2 --producers "$here/examples/demo/producers.toml" -- \
  sh "$here/examples/demo/kexec-demo.sh" "$image"
rm -f "$mnt.bzImage"
printf '\nDone: nothing is left mounted.\n'
