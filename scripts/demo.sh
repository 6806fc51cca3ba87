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
run "echo 1 > kho/out/finalize"
run khofs kexec "$mnt"
run ls -l kho/in kho/in/sub_fdts
run dtc -I dtb -O dts kho/in/sub_fdts/demo
run "khofs log $mnt | grep -E 'KHO|kexec'"
cd /
run khofs umount "$mnt"
printf '\nDone: nothing is left mounted.\n'
