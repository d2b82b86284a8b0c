#!/usr/bin/env bash
# Builds the meshauth test cluster's components from source (Go modules
# pinned in build/*/go.mod and go.sum) into a cache outside the repo:
#
#   ${MESHAUTH_BUILD_CACHE:-/var/cache/meshauth-build}/<component>-<version>/bin/
#
# Usage: build.sh [COMPONENT...]     (default: all, see versions.env)
#        build.sh --path COMPONENT   print the component's bin dir (no build)
#
# A component whose cache dir exists and whose recipe stamp matches is
# skipped. A build goes to a temp dir under the cache root and is renamed into
# place only when complete, so an interrupted build is never taken as done.
# Go's module and build caches live under the same root: pointing
# MESHAUTH_BUILD_CACHE at an empty directory is a cold build.
#
# Environment: MESHAUTH_BUILD_CACHE (cache root), MESHAUTH_BUILD_JOBS (go
# build -p, default: number of CPUs). Needs Go (the go line of build/*/go.mod),
# gcc and libseccomp-dev (runc, spire-server's SQLite are cgo).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache=${MESHAUTH_BUILD_CACHE:-/var/cache/meshauth-build}
jobs=${MESHAUTH_BUILD_JOBS:-$(nproc)}

version_of() { # component -> its version from versions.env
	local var
	var="$(tr 'a-z-' 'A-Z_' <<<"$1")_VERSION"
	[[ -n "${!var:-}" ]] || { echo "build.sh: unknown component '$1' (known: $COMPONENTS)" >&2; exit 2; }
	printf '%s\n' "${!var}"
}

if [[ "${1:-}" == "--path" ]]; then
	[[ $# -eq 2 ]] || { echo "usage: build.sh --path COMPONENT" >&2; exit 2; }
	echo "$cache/$2-$(version_of "$2")/bin"
	exit 0
fi

export GOMODCACHE="$cache/gomod" GOCACHE="$cache/gocache"
export GOTOOLCHAIN=local # never fetch a toolchain: build with the one installed
# readonly: go.mod/go.sum are complete and committed; modcacherw: the cache
# root can be removed with rm -rf; trimpath: binaries do not depend on where
# the cache root is.
export GOFLAGS="-mod=readonly -modcacherw -trimpath -buildvcs=false"
export CGO_ENABLED=0
unset GOOS GOARCH GOBIN

# --- recipes: each builds into $1/bin, run in build/<module> ------------------

build_kubernetes() {
	# One multi-call binary (build/kubernetes/main.go) hard-linked under each
	# component's name: one link instead of six, a sixth of the disk.
	local v=$KUBERNETES_VERSION minor ld="-s -w" p k
	minor=${v#v1.}; minor=${minor%%.*}
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		for k in "gitVersion=$v" gitMajor=1 "gitMinor=$minor" gitTreeState=clean "buildDate=$KUBERNETES_BUILD_DATE"; do
			ld+=" -X $p.$k"
		done
	done
	check_pins k8s.io/kubernetes "$v" k8s.io/client-go "v0.${v#v1.}"
	gob -ldflags "$ld" -o "$1/bin/kube" .
	for k in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
		ln "$1/bin/kube" "$1/bin/$k"
	done
}

build_etcd() {
	check_pins go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/etcdctl/v3 "$ETCD_VERSION"
	gob -ldflags "-s -w" -o "$1/bin/etcd" go.etcd.io/etcd/server/v3
	gob -ldflags "-s -w" -o "$1/bin/etcdctl" go.etcd.io/etcd/etcdctl/v3
}

build_containerd() {
	local p=github.com/containerd/containerd/v2
	local ld="-s -w -X $p/version.Version=$CONTAINERD_VERSION -X $p/version.Package=$p"
	check_pins "$p" "$CONTAINERD_VERSION"
	# CGO_ENABLED=0 leaves out the btrfs snapshotter (needs cgo and btrfs
	# headers); overlayfs and native remain. The shim as upstream's Makefile.
	gob -ldflags "$ld" -o "$1/bin/" "$p/cmd/containerd" "$p/cmd/ctr"
	gob -tags no_grpc -ldflags "$ld" -o "$1/bin/containerd-shim-runc-v2" "$p/cmd/containerd-shim-runc-v2"
}

build_runc() {
	# As upstream's "make static": cgo (libcontainer/nsenter is C) with
	# libseccomp, linked as a static PIE so it runs in any root file system.
	pkg-config --exists libseccomp || { echo "build.sh: runc needs libseccomp-dev (apt-get install libseccomp-dev)" >&2; return 1; }
	check_pins github.com/opencontainers/runc "$RUNC_VERSION"
	CGO_ENABLED=1 gob -buildmode=pie -tags "seccomp urfave_cli_no_docs netgo osusergo" \
		-ldflags "-s -w -linkmode external -extldflags -static-pie" \
		-o "$1/bin/runc" github.com/opencontainers/runc
}

build_cni() {
	local p=github.com/containernetworking/plugins
	check_pins "$p" "$CNI_VERSION"
	gob -ldflags "-s -w -X $p/pkg/utils/buildversion.BuildVersion=$CNI_VERSION" -o "$1/bin/" \
		"$p/plugins/main/bridge" "$p/plugins/main/loopback" "$p/plugins/main/ptp" \
		"$p/plugins/ipam/host-local" "$p/plugins/meta/portmap"
}

build_coredns() {
	# build/coredns/main.go: CoreDNS with the plugins a cluster DNS uses.
	check_pins github.com/coredns/coredns "$COREDNS_VERSION"
	gob -ldflags "-s -w" -o "$1/bin/coredns" .
}

build_crane() {
	local p=github.com/google/go-containerregistry
	check_pins "$p" "$CRANE_VERSION"
	gob -ldflags "-s -w -X $p/cmd/crane/cmd.Version=$CRANE_VERSION" -o "$1/bin/crane" "$p/cmd/crane"
}

build_pause() {
	grep -q "\"$PAUSE_VERSION\"" main.go || { echo "build.sh: PAUSE_VERSION=$PAUSE_VERSION is not the version in build/pause/main.go" >&2; return 1; }
	gob -ldflags "-s -w" -o "$1/bin/pause" .
}

build_probe() {
	grep -q "\"$PROBE_VERSION\"" main.go || { echo "build.sh: PROBE_VERSION=$PROBE_VERSION is not the version in build/probe/main.go" >&2; return 1; }
	gob -ldflags "-s -w" -o "$1/bin/probe" .
}

build_spire() {
	local p=github.com/spiffe/spire ld
	ld="-s -w -X $p/pkg/common/version.gittag=${SPIRE_VERSION#v}"
	check_pins "$p" "$SPIRE_VERSION"
	# The server's default datastore is SQLite (mattn/go-sqlite3, cgo):
	# linked statically as upstream's "make build-static". The agent needs
	# no cgo.
	CGO_ENABLED=1 gob -tags "netgo osusergo sqlite_omit_load_extension" \
		-ldflags "$ld -linkmode external -extldflags -static" -o "$1/bin/spire-server" "$p/cmd/spire-server"
	gob -ldflags "$ld" -o "$1/bin/spire-agent" "$p/cmd/spire-agent"
}

build_helm() {
	local p=helm.sh/helm/v3 ld kv minor
	check_pins "$p" "$HELM_VERSION"
	kv=$(go list -m -f '{{.Version}}' k8s.io/client-go) # as upstream's Makefile
	minor=${kv#v0.}; minor=${minor%%.*}
	ld="-s -w -X $p/internal/version.version=$HELM_VERSION -X $p/internal/version.gitTreeState=clean"
	ld+=" -X $p/pkg/lint/rules.k8sVersionMajor=1 -X $p/pkg/lint/rules.k8sVersionMinor=$minor"
	ld+=" -X $p/pkg/chartutil.k8sVersionMajor=1 -X $p/pkg/chartutil.k8sVersionMinor=$minor"
	gob -ldflags "$ld" -o "$1/bin/helm" "$p/cmd/helm"
}

# The Go module each component builds in (build/<module>).
module_of() { echo "$1"; }

# --- machinery ----------------------------------------------------------------

gob() { go build -p "$jobs" "$@"; }

check_pins() { # module version ...: the go.mod pin must be versions.env's
	while [[ $# -gt 0 ]]; do
		local got
		got=$(go list -m -f '{{.Version}}' "$1")
		[[ "$got" == "$2" ]] || { echo "build.sh: $(pwd)/go.mod has $1 $got, versions.env says $2" >&2; return 1; }
		shift 2
	done
}

recipe_of() { # what a cached build must match: version, module files, recipe, Go
	local c=$1 dir="$here/build/$(module_of "$1")"
	{
		echo "$c $(version_of "$c")"
		(cd "$dir" && sha256sum go.mod $(ls go.sum *.go 2>/dev/null))
		declare -f "build_$c"
		go version
	} | sha256sum | cut -c1-16
}

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { print b - a }'; }

tmp=""
cleanup() { [[ -z "$tmp" ]] || rm -rf "$tmp"; }
trap cleanup EXIT

build_one() { # component -> status line
	local c=$1 v dest recipe start status
	v=$(version_of "$c")
	dest="$cache/$c-$v"
	recipe=$(recipe_of "$c")
	start=$(date +%s.%N)
	if [[ -f "$dest/.recipe" && "$(cat "$dest/.recipe")" == "$recipe" ]]; then
		status=cached
	else
		[[ ! -e "$dest" ]] || echo "build.sh: $c-$v: cached build is of another recipe, rebuilding" >&2
		tmp=$(mktemp -d "$cache/.tmp/$c-$v.XXXXXX")
		mkdir "$tmp/new" "$tmp/new/bin"
		echo "build.sh: building $c $v" >&2
		(cd "$here/build/$(module_of "$c")"; "build_$c" "$tmp/new")
		echo "$recipe" >"$tmp/new/.recipe"
		[[ ! -e "$dest" ]] || mv "$dest" "$tmp/old"
		mv "$tmp/new" "$dest"
		rm -rf "$tmp"; tmp=""
		status=built
	fi
	printf '%-11s %-14s %8.1fs  %-6s  %s\n' "$c" "$v" "$(elapsed "$start")" "$status" "$(du -sh "$dest/bin" | cut -f1)"
}

main() {
	local c t0 all=("$@")
	[[ ${#all[@]} -gt 0 ]] || read -r -a all <<<"$COMPONENTS"
	for c in "${all[@]}"; do version_of "$c" >/dev/null; done
	mkdir -p "$cache/.tmp"
	exec 9>"$cache/.lock"
	flock 9 # one build.sh at a time per cache root
	rm -rf "${cache:?}/.tmp/"* # what a killed build left behind (we hold the lock)
	t0=$(date +%s.%N)
	echo "build.sh: cache $cache, go build -p $jobs, $(go version | cut -d' ' -f3)" >&2
	printf '%-11s %-14s %9s  %-6s  %s\n' component version wall status bin-size
	for c in "${all[@]}"; do build_one "$c"; done
	printf '%-11s %-14s %8.1fs\n' total "" "$(elapsed "$t0")"
}

main "$@"
