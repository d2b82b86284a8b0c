#!/usr/bin/env bash
# `npm run test:cluster`: builds what is missing (build.sh), brings a cluster up
# (up.sh), installs meshauth from deploy/ through an overlay
# (install-meshauth.sh), runs the checks (test/cluster/checks, ava with
# ava.cluster.config.js), and removes the cluster (down.sh), also when a step
# fails. Prints the time of each phase.
#
# Usage: run-checks.sh [ava args...]
#   CLUSTER_DIR=<dir> run-checks.sh: use that running cluster (up.sh's output)
#   and leave it up; meshauth must not be installed yet.
# Takes the machine's kernel lock (/tmp/meshauth-kernel.lock) for the whole run
# unless MESHAUTH_KERNEL_LOCK_HELD=1 (the caller holds it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [[ "${MESHAUTH_KERNEL_LOCK_HELD:-}" != 1 ]]; then
	exec env MESHAUTH_KERNEL_LOCK_HELD=1 flock /tmp/meshauth-kernel.lock "$0" "$@"
fi

t0=$(date +%s)
phase() { echo "run-checks: $1 at $(($(date +%s) - t0)) s" >&2; }

"$here/build.sh" kubernetes etcd containerd runc cni coredns crane pause probe helm >&2
phase "built"
own=false
if [[ -z "${CLUSTER_DIR:-}" ]]; then
	CLUSTER_DIR=$("$here/up.sh" | tail -1)
	own=true
	trap '"$here/down.sh" "$CLUSTER_DIR"' EXIT
fi
export CLUSTER_DIR
phase "cluster up ($CLUSTER_DIR)"
"$here/install-meshauth.sh" "$CLUSTER_DIR" >/dev/null
phase "meshauth applied"
export CLUSTER_PROBE_BIN="$("$here/build.sh" --path probe)/probe"
cd "$repo"
status=0
npx ava --config ava.cluster.config.js "$@" || status=$?
phase "checks done (exit $status)"
if $own; then
	"$here/down.sh" "$CLUSTER_DIR"
	trap - EXIT
	phase "cluster down"
fi
exit "$status"
