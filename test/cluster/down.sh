#!/usr/bin/env bash
# Removes a cluster that up.sh made, all of it, also after a failed or
# interrupted up.sh (up.sh writes each thing to CLUSTER_DIR/state before it
# makes it):
#
#   processes  every process in one of the cluster's network namespaces or node
#              mount namespaces (every daemon up.sh started, containerd's shims,
#              host-network pods) and every process in the nodes' cgroups (the
#              pods). Not by the pids in the state file: a pid may have been
#              reused by another process since.
#   namespaces the network namespaces (pods' own go with the node mount
#              namespaces that pin them, and those with their last process)
#   cgroups    /sys/fs/cgroup/*/meshauth-<run>-<node>, depth first
#   files      CLUSTER_DIR
#
# Usage: down.sh CLUSTER_DIR     or   down.sh --all   (every /tmp/meshauth-cluster-*)
set -uo pipefail

down_one() {
	local W=$1 state="$1/state"
	[[ -f "$state" ]] || { echo "down.sh: $W has no state file" >&2; return 1; }
	local -a netns=() nsinodes=() mntinodes=() cgroups=()
	local kind a b
	while read -r kind a b; do
		case $kind in
		netns) netns+=("$a") ;;
		netns-inode) nsinodes+=("$a") ;;
		mntns-inode) mntinodes+=("$a") ;;
		cgroup) cgroups+=("$a") ;;
		esac
	done <"$state"

	# Processes: kill, look again (a dying kubelet or containerd may still have
	# started something), until none is left.
	local round victims p ino cg h
	for round in $(seq 20); do
		victims=()
		# One stat for all processes: "/proc/PID/ns/net INODE" per line.
		while read -r p ino; do
			p=${p#/proc/}; p=${p%%/*}
			[[ $p == "$$" ]] && continue
			[[ " ${nsinodes[*]} ${mntinodes[*]} " == *" $ino "* ]] && victims+=("$p")
		done < <(stat -L -c '%n %i' /proc/[0-9]*/ns/net /proc/[0-9]*/ns/mnt 2>/dev/null)
		for cg in "${cgroups[@]}"; do
			for h in /sys/fs/cgroup/*/"$cg"; do
				[[ -d "$h" ]] || continue
				while read -r p; do victims+=("$p"); done < <(find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null)
			done
		done
		[[ ${#victims[@]} -gt 0 ]] || break
		kill -9 "${victims[@]}" 2>/dev/null
		sleep 0.3
	done
	[[ ${#victims[@]} -eq 0 ]] || echo "down.sh: processes still alive after 20 rounds: ${victims[*]}" >&2

	local ns
	for ns in "${netns[@]}"; do
		[[ -e "/run/netns/$ns" ]] && ip netns del "$ns"
	done

	for cg in "${cgroups[@]}"; do
		for h in /sys/fs/cgroup/*/"$cg"; do
			[[ -d "$h" ]] || continue
			for round in $(seq 10); do
				find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
				[[ -d "$h" ]] || break
				sleep 0.5
			done
			[[ ! -d "$h" ]] || echo "down.sh: cgroup $h not removed" >&2
		done
	done

	# Nothing up.sh made is mounted in the host's namespace; this only guards
	# against a mount leaked by a bug, so that rm -rf cannot reach through it.
	grep -F " $W/" /proc/self/mountinfo | awk '{ print $5 }' | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$W"
	echo "down.sh: removed $W" >&2
}

if [[ "${1:-}" == "--all" ]]; then
	for d in /tmp/meshauth-cluster-mc*; do [[ -d "$d" ]] && down_one "$d"; done
	exit 0
fi
[[ $# -eq 1 ]] || { echo "usage: down.sh CLUSTER_DIR | --all" >&2; exit 2; }
down_one "$1"
