#!/usr/bin/env bash
# Runs CI as it runs on a new machine: `bash .ci/run` (CI=true, no standard input) in a fresh
# clone of this checkout's HEAD, beside a copy of ../shared, with the npm cache, the tsx cache
# (it lives under TMPDIR), the guest VM cache (GUEST_CACHE), the Go build cache of test/cluster
# (MESHAUTH_BUILD_CACHE: the CNI tests build the CNI plugins) and TMPDIR itself in empty
# directories. Debian packages that are already installed stay installed (purge them by hand
# to test setup's install step). Commit first: only HEAD is cloned.
# Usage: bash scripts/ci-fresh.sh [WORKDIR]   (default: a new directory under /var/tmp; kept, with log)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /var/tmp/meshauth-ci.XXXXXX)}
mkdir -p "$work"/caches/{npm,tmp,guest}
git clone -q "$repo" "$work/main"
cp -r "$repo/../shared" "$work/shared"
echo "ci-fresh: $(git -C "$work/main" log -1 --format='%h %s') in $work (log: $work/ci.log)"
start=$(date +%s)
rc=0
(cd "$work/main" && env CI=true npm_config_cache="$work/caches/npm" TMPDIR="$work/caches/tmp" GUEST_CACHE="$work/caches/guest" MESHAUTH_BUILD_CACHE="$work/caches/build" \
  bash .ci/run </dev/null) >"$work/ci.log" 2>&1 || rc=$?
echo "ci-fresh: exit $rc after $(( $(date +%s) - start )) s; $(grep -E '^\s*[0-9]+ tests? (passed|failed)' "$work/ci.log" | tr -s ' ' | paste -sd, -)"
exit "$rc"
