#!/usr/bin/env bash
# Runs as the first process of a node's mount namespace (up.sh starts it with
# `nsenter --net=<node netns> unshare --mount --propagation slave`), lays out
# the node's own file system view, then stays as the namespace's holder.
#
# Usage: node-mounts.sh NODE_DIR
#
# - / becomes shared within this namespace (slave of the host's: host mounts
#   still appear here, nothing mounted here reaches the host); kubelet and
#   containerd need shared mounts for mountPropagation.
# - /sys: a sysfs of this node's network namespace (the host's shows the host's
#   interfaces), the host's cgroup hierarchies bound back under it, and a bpffs
#   of the node's own at /sys/fs/bpf (the agent's pins are per node).
# - /run (tmpfs), /var/lib and /var/log: NODE_DIR/{run,var-lib,var-log}, so
#   /run/containerd, /run/netns, /var/lib/kubelet, /var/lib/containerd,
#   /var/lib/cni, /var/lib/meshauth, /var/log/pods are the node's own.
# - The kernel-wide settings kubelet sets at start (vm.overcommit_memory,
#   kernel.panic, kernel.panic_on_oops, ...) are files of NODE_DIR/sysctl bound
#   over /proc/sys: kubelet sets them there, and the shared machine keeps its
#   own (kernel.panic_on_oops=1 would turn any engineer's oops into a reboot).
#
# When the last process of the namespace ends, every mount above goes with it.
set -euo pipefail
node_dir=$1

# (The cgroup copy is private, so that unmounting it is not propagated to the copy kept under /sys.)
mkdir -p "$node_dir/.cgroup"
mount --rbind /sys/fs/cgroup "$node_dir/.cgroup"
mount --make-rprivate "$node_dir/.cgroup"
mount -t sysfs sysfs /sys
mount --rbind "$node_dir/.cgroup" /sys/fs/cgroup
umount -l "$node_dir/.cgroup"
mount -t bpf bpffs /sys/fs/bpf

mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns /run/lock
for d in var-lib var-log; do mkdir -p "$node_dir/$d"; done
mount --bind "$node_dir/var-lib" /var/lib
mount --bind "$node_dir/var-log" /var/log
mount --make-rshared /

mkdir -p "$node_dir/sysctl"
for k in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
	f="$node_dir/sysctl/${k//\//.}"
	cat "/proc/sys/$k" >"$f"
	mount --bind "$f" "/proc/sys/$k"
done

touch "$node_dir/.mounted"
exec sleep infinity
