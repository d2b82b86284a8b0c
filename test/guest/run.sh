#!/bin/sh
# Runs inside the run-in-guest VM: loads the kernel modules the transports need, then runs each
# named program (compiled, from dist/test/guest/: TypeScript would be compiled anew in every boot,
# 30-50x slower here) one after the other within its own time limit. Each program prints one
# JSON line per check; around each, a stage line says when it started and how it ended, so a run
# that runs out of time says which stage did. Arguments: PROGRAM:SECONDS ...
# Used by test/guest-vm.test.ts and bench/transport.ts.
set -u
stage() { printf '{"stage":"%s","event":"%s","uptimeS":%s}\n' "$1" "$2" "$(cut -d' ' -f1 /proc/uptime)"; }
stage boot end
for module in wireguard esp4 esp6 xfrm_user veth bridge; do modprobe "$module" || exit 1; done
status=0
for spec in "$@"; do
  program=${spec%%:*} limit=${spec#*:}
  stage "$program" start
  timeout -k 5 "$limit" node "dist/test/guest/$program.js"
  rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then stage "$program" timeout; status=1
  elif [ "$rc" -ne 0 ]; then stage "$program" failed; status=1
  else stage "$program" end; fi
done
exit $status
