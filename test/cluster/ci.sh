#!/usr/bin/env bash
# What .ci/run can call for the real-cluster checks: builds every component the
# checks use (a no-op, 0.5 s, when cached; 25-30 min on a fresh 2-core machine,
# see README.md "Measured"), then `npm run test:cluster` (cluster up, meshauth
# installed, checks, cluster down). Needs `npm run build` done and the Debian
# packages of scripts/debian-packages.txt.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=$(date +%s)
"$here/build.sh" kubernetes etcd containerd runc cni coredns crane pause probe helm
echo "cluster ci: components built in $(($(date +%s) - start)) s" >&2
cd "$here/../.."
npm run test:cluster
echo "cluster ci: total $(($(date +%s) - start)) s" >&2
