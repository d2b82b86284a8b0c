#!/bin/sh
# Runs inside the run-in-guest VM: loads the kernel modules IPsec needs and runs the agent IPsec
# scenario (test/guest/agent-ipsec.ts) from the build, since node loads TypeScript slowly here.
# Used by test/agent-ipsec.test.ts.
set -e
for module in esp4 xfrm_user veth; do modprobe "$module"; done
exec node dist/test/guest/agent-ipsec.js
