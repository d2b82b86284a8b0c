#!/bin/sh
# Runs inside the run-in-guest VM: loads the kernel modules the transports need and runs one
# TypeScript program (default: the transport checks) in one node process, since node starts
# slowly here. Used by test/transport-guest.test.ts and bench/transport.ts.
set -e
for module in wireguard esp4 esp6 xfrm_user veth bridge; do modprobe "$module"; done
exec node --import tsx "test/guest/${1:-transport-scenarios.ts}"
