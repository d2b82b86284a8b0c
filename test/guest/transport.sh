#!/bin/sh
# Runs inside the run-in-guest VM (see test/transport-guest.test.ts): loads the kernel modules
# the transports need and runs the checks once, in one node process (node starts slowly here).
set -e
for module in wireguard esp4 esp6 xfrm_user veth bridge; do modprobe "$module"; done
exec node --import tsx test/guest/transport-scenarios.ts "$@"
