#!/usr/bin/env bash
# Brings up a two-node Kubernetes cluster on this machine, kind-style, with
# network and mount namespaces instead of containers (README.md: "The
# cluster"). Prints the cluster's directory on its last line; everything about
# the cluster is in it:
#
#   env        CLUSTER_DIR, KUBECONFIG, addresses; `. env` in a shell
#   bin/kubectl        kubectl in the control plane's network namespace
#   bin/node-exec NODE CMD...   CMD in node NODE's network + mount namespaces
#   state      what down.sh removes (written before each thing is made)
#   logs/      every component's log
#
# Usage: up.sh [--keep-on-failure]
#   Without the flag a failed up runs down.sh itself.
#
# Topology (all addresses exist only inside the namespaces made here):
#   ns <run>-ul   bridge br0 (the underlay)                       10.77.0.0/24
#   ns <run>-cp   etcd, kube-apiserver, controller-manager,       10.77.0.10
#                 scheduler
#   ns <run>-a    node-a: containerd, kubelet, kube-proxy,         10.77.0.11
#                 pods 10.244.x.0/24 on cni0 (bridge + host-local)
#   ns <run>-b    node-b: the same                                 10.77.0.12
#   Services 10.96.0.0/16 (kube-proxy iptables in each node), DNS 10.96.0.10.
#   Each node's pod CIDR is routed to it from the other node and the control
#   plane; no masquerade, so a pod's source address is seen everywhere.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
keep=false
[[ "${1:-}" != "--keep-on-failure" ]] || keep=true

t_start=$(date +%s.%N)
"$here/build.sh" kubernetes etcd containerd runc cni coredns crane pause probe >/dev/null
kbin=$("$here/build.sh" --path kubernetes)
ebin=$("$here/build.sh" --path etcd)
cbin=$("$here/build.sh" --path containerd)
rbin=$("$here/build.sh" --path runc)
cnibin=$("$here/build.sh" --path cni)

run=mc$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
W=/tmp/meshauth-cluster-$run
mkdir -p "$W"/{pki,logs,bin,manifests}
state="$W/state"
: >"$state"
record() { echo "$*" >>"$state"; }

failed() {
	echo "up.sh: failed at line $1; logs in $W/logs" >&2
	if $keep; then
		echo "up.sh: kept for inspection; remove with: $here/down.sh $W" >&2
	else
		"$here/down.sh" "$W" >&2 || true
	fi
}
trap 'failed $LINENO' ERR

say() { printf '[%6.1fs] %s\n' "$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$*" >&2; }

UL_NET=10.77.0
CP_IP=$UL_NET.10
declare -A NODE_IP=([a]=$UL_NET.11 [b]=$UL_NET.12)
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_IP=10.96.0.10
ns_ul=$run-ul ns_cp=$run-cp
declare -A NS=([a]=$run-a [b]=$run-b)
PATH_NODE="$cbin:$rbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# --- network namespaces and the underlay ----------------------------------------
say "run $run in $W"
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
for ns in "$ns_ul" "$ns_cp" "${NS[a]}" "${NS[b]}"; do
	record netns "$ns"
	ip netns add "$ns"
	record netns-inode "$(stat -L -c %i "/run/netns/$ns")"
	in_ns "$ns" ip link set lo up
done
in_ns "$ns_ul" ip link add br0 type bridge
in_ns "$ns_ul" ip link set br0 up
attach() { # ns ip port: eth0 in ns, its peer (port) on the underlay bridge
	ip link add eth0 netns "$1" type veth peer name "$3" netns "$ns_ul"
	in_ns "$ns_ul" ip link set "$3" master br0 up
	in_ns "$1" ip addr add "$2/24" dev eth0
	in_ns "$1" ip link set eth0 up
}
attach "$ns_cp" "$CP_IP" p-cp
for n in a b; do attach "${NS[$n]}" "${NODE_IP[$n]}" "p-$n"; done

# --- PKI (openssl) ---------------------------------------------------------------------
say "PKI"
pki=$W/pki
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=meshauth-cluster-$run-ca" \
	-keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
cert() { # name subject extensions
	openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
	printf '%s\n' "$3" >"$pki/$1.ext"
	openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
		-extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}
client=$'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment'
cert apiserver /CN=kube-apiserver $'extendedKeyUsage=serverAuth\nsubjectAltName=IP:'"$CP_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=meshauth-admin" "$client"
cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
cert controller-manager /CN=system:kube-controller-manager "$client"
cert scheduler /CN=system:kube-scheduler "$client"
cert kube-proxy /CN=system:kube-proxy "$client"
for n in a b; do
	cert "kubelet-$n" "/O=system:nodes/CN=system:node:node-$n" "$client"
	cert "kubelet-$n-serving" "/CN=node-$n" $'extendedKeyUsage=serverAuth\nsubjectAltName=IP:'"${NODE_IP[$n]},DNS:node-$n"
done
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

kubeconfig() { # file user
	local k="$W/$1.kubeconfig"
	"$kbin/kubectl" config set-cluster meshauth --kubeconfig "$k" --server "https://$CP_IP:6443" \
		--certificate-authority "$pki/ca.crt" --embed-certs >/dev/null
	"$kbin/kubectl" config set-credentials "$2" --kubeconfig "$k" \
		--client-certificate "$pki/$2.crt" --client-key "$pki/$2.key" --embed-certs >/dev/null
	"$kbin/kubectl" config set-context meshauth --kubeconfig "$k" --cluster meshauth --user "$2" >/dev/null
	"$kbin/kubectl" config use-context meshauth --kubeconfig "$k" >/dev/null
}
kubeconfig admin admin
kubeconfig controller-manager controller-manager
kubeconfig scheduler scheduler
kubeconfig kube-proxy kube-proxy
for n in a b; do kubeconfig "kubelet-$n" "kubelet-$n"; done

cat >"$W/bin/kubectl" <<EOF
#!/bin/sh
# kubectl as the cluster admin, from the control plane's network namespace.
exec nsenter --net=/run/netns/$ns_cp -- "$kbin/kubectl" --kubeconfig "$W/admin.kubeconfig" "\$@"
EOF
chmod +x "$W/bin/kubectl"
kubectl() { "$W/bin/kubectl" "$@"; }

# daemon NAME NS CMD...: CMD in network namespace NS (own session), logged.
daemon() {
	local name=$1 ns=$2
	shift 2
	setsid nsenter --net="/run/netns/$ns" -- "$@" >"$W/logs/$name.log" 2>&1 </dev/null &
	record pid "$!" "$name"
}

# --- control plane ---------------------------------------------------------------------
say "control plane"
daemon etcd "$ns_cp" "$ebin/etcd" --name cp --data-dir "$W/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster cp=http://127.0.0.1:2380
daemon kube-apiserver "$ns_cp" "$kbin/kube-apiserver" \
	--etcd-servers http://127.0.0.1:2379 \
	--advertise-address "$CP_IP" --bind-address 0.0.0.0 --secure-port 6443 \
	--tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
	--client-ca-file "$pki/ca.crt" \
	--kubelet-client-certificate "$pki/apiserver-kubelet.crt" --kubelet-client-key "$pki/apiserver-kubelet.key" \
	--kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
	--service-account-issuer https://kubernetes.default.svc.cluster.local \
	--service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
	--service-cluster-ip-range "$SERVICE_CIDR" \
	--authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
	--allow-privileged=true
wait_for() { # description seconds command...: polls every 0.5 s
	local what=$1 secs=$2 i
	shift 2
	for ((i = 0; i < secs * 2; i++)); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.5
	done
	echo "up.sh: timed out after ${secs}s waiting for $what" >&2
	return 1
}
wait_for "kube-apiserver /readyz" 120 kubectl get --raw /readyz
# After /readyz: their bootstrap RBAC (extension-apiserver-authentication reader) exists by then.
daemon kube-controller-manager "$ns_cp" "$kbin/kube-controller-manager" \
	--kubeconfig "$W/controller-manager.kubeconfig" \
	--authentication-kubeconfig "$W/controller-manager.kubeconfig" \
	--authorization-kubeconfig "$W/controller-manager.kubeconfig" \
	--bind-address 127.0.0.1 --leader-elect=false \
	--allocate-node-cidrs --cluster-cidr "$CLUSTER_CIDR" --node-cidr-mask-size 24 \
	--service-cluster-ip-range "$SERVICE_CIDR" \
	--root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
	--cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
	--use-service-account-credentials
daemon kube-scheduler "$ns_cp" "$kbin/kube-scheduler" \
	--kubeconfig "$W/scheduler.kubeconfig" \
	--authentication-kubeconfig "$W/scheduler.kubeconfig" \
	--authorization-kubeconfig "$W/scheduler.kubeconfig" \
	--bind-address 127.0.0.1 --leader-elect=false


# --- nodes -------------------------------------------------------------------------------
printf 'nameserver %s\n' "$DNS_IP" >"$W/resolv.conf" # kubelet's for dnsPolicy Default: no upstream here
cat >"$W/bin/node-exec" <<EOF
#!/bin/sh
# node-exec a|b CMD...: CMD in the node's network and mount namespaces.
n=\$1; shift
exec nsenter --target "\$(cat $W/nodes/\$n/holder)" --mount --net -- env PATH=$PATH_NODE "\$@"
EOF
chmod +x "$W/bin/node-exec"

start_node() { # n
	local n=$1 N="$W/nodes/$1" holder
	mkdir -p "$N/cni/net.d"
	setsid nsenter --net="/run/netns/${NS[$n]}" -- unshare --mount --propagation slave -- \
		bash "$here/node-mounts.sh" "$N" >"$W/logs/node-$n-mounts.log" 2>&1 </dev/null &
	holder=$!
	record pid "$holder" "node-$n-holder"
	echo "$holder" >"$N/holder"
	wait_for "node-$n's mount namespace" 30 test -e "$N/.mounted"
	record mntns-inode "$(stat -L -c %i "/proc/$holder/ns/mnt")"

	# The node's cgroup root in every v1 hierarchy (and the unified one), made
	# here because kubelet requires its --cgroup-root to exist.
	local cg="meshauth-$run-$n" h
	record cgroup "$cg"
	for h in /sys/fs/cgroup/*/; do
		mkdir -p "$h$cg"
		if [[ -f "$h/cpuset.cpus" ]]; then
			cat "$h/cpuset.cpus" >"$h$cg/cpuset.cpus"
			cat "$h/cpuset.mems" >"$h$cg/cpuset.mems"
		fi
	done

	cat >"$N/containerd.toml" <<EOF
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "meshauth.local/pause:meshauth-1"
  [plugins.'io.containerd.cri.v1.runtime']
    # Root here lacks CAP_SYS_RESOURCE (the machine's sandbox drops it), so a process may not lower
    # its oom_score_adj: containers get at least containerd's own, as for containerd in kind.
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$rbin/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$cnibin"]
      conf_dir = "$N/cni/net.d"
EOF
	node_daemon "$n" containerd "$cbin/containerd" --config "$N/containerd.toml"
	wait_for "node-$n containerd" 60 "$W/bin/node-exec" "$n" ctr --address /run/containerd/containerd.sock version
}

node_daemon() { # n name cmd...: in the node's namespaces, own session, logged
	local n=$1 name=$2
	shift 2
	setsid nsenter --target "$(cat "$W/nodes/$n/holder")" --mount --net -- env PATH="$PATH_NODE" "$@" \
		>"$W/logs/node-$n-$name.log" 2>&1 </dev/null &
	record pid "$!" "node-$n-$name"
}

import_images() { # n tarball...
	local n=$1 t
	shift
	for t in "$@"; do
		"$W/bin/node-exec" "$n" ctr --address /run/containerd/containerd.sock -n k8s.io images import "$t" >/dev/null 2>"$W/logs/node-$n-import.log"
	done
}

start_kubelet() { # n
	local n=$1 N="$W/nodes/$1"
	cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP[$n]}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $pki/kubelet-$n-serving.crt
tlsPrivateKeyFile: $pki/kubelet-$n-serving.key
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /meshauth-$run-$n
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
clusterDNS: [$DNS_IP]
clusterDomain: cluster.local
resolvConf: $W/resolv.conf
# The shared machine's disk and memory are other engineers' too: evict only when nearly full,
# and never garbage-collect the imported images (they cannot be pulled again).
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 30
rotateCertificates: false
EOF
	node_daemon "$n" kubelet "$kbin/kubelet" --config "$N/kubelet.yaml" \
		--kubeconfig "$W/kubelet-$n.kubeconfig" --hostname-override "node-$n" --node-ip "${NODE_IP[$n]}" --v=1
}

start_kube_proxy() { # n
	local n=$1 N="$W/nodes/$1"
	cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $W/kube-proxy.kubeconfig}
hostnameOverride: node-$n
clusterCIDR: $CLUSTER_CIDR
# nf_conntrack_max is kernel-wide (read-only outside the initial network namespace): leave it,
# and the conntrack timeouts, as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
metricsBindAddress: 127.0.0.1:10249
EOF
	node_daemon "$n" kube-proxy "$kbin/kube-proxy" --config "$N/kube-proxy.yaml"
}

say "nodes: mount namespaces, containerd"
for n in a b; do
	# Forwarding between the pods' bridge and the underlay; bridged pod traffic through
	# iptables, which kube-proxy needs for Services between pods of one node.
	in_ns "${NS[$n]}" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
	# A default route, as every real node has: without one, host-network processes (kubelet
	# probes aside, the meshauth agent) cannot even route to a ClusterIP before kube-proxy's DNAT
	# (ENETUNREACH). It leads to the control plane's namespace, which forwards nothing.
	in_ns "${NS[$n]}" ip route add default via "$CP_IP"
	start_node "$n"
done
say "images"
mapfile -t images < <("$here/images.sh")
for l in "${images[@]}"; do
	read -r name ref tarball <<<"$l"
	printf '%s=%s\n' "IMAGE_${name^^}" "$ref" >>"$W/images.env"
	record image "$name" "$ref" "$tarball"
done
importers=()
for n in a b; do
	import_images "$n" $(awk '$1 == "image" { print $4 }' "$state") &
	importers+=($!)
done
for p in "${importers[@]}"; do wait "$p"; done
say "kubelets, kube-proxies"
for n in a b; do start_kubelet "$n"; start_kube_proxy "$n"; done

pod_cidr() { kubectl get node "node-$1" -o jsonpath='{.spec.podCIDR}'; }
has_pod_cidr() { [[ -n "$(pod_cidr "$1")" ]]; }
for n in a b; do wait_for "node-$n registered with a pod CIDR" 120 has_pod_cidr "$n"; done
declare -A CIDR=([a]=$(pod_cidr a) [b]=$(pod_cidr b))

# --- pod network: the bridge plugin per node, routes between nodes --------------------------
say "pod network: a ${CIDR[a]}, b ${CIDR[b]}"
for n in a b; do
	o=$([[ $n == a ]] && echo b || echo a)
	in_ns "${NS[$n]}" ip route add "${CIDR[$o]}" via "${NODE_IP[$o]}"
	in_ns "$ns_cp" ip route add "${CIDR[$n]}" via "${NODE_IP[$n]}"
	# ipMasq false: pods keep their source address to other nodes (meshauth identifies them by it).
	cat >"$W/nodes/$n/cni/net.d/10-meshauth-test.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "meshauth-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "${CIDR[$n]}" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
done
for n in a b; do
	wait_for "node-$n Ready" 120 kubectl wait --for=condition=Ready "node/node-$n" --timeout=1s
done

# --- CoreDNS ------------------------------------------------------------------------------------
say "CoreDNS"
. "$W/images.env"
sed -e "s|@IMAGE@|$IMAGE_COREDNS|" -e "s|@DNS_IP@|$DNS_IP|" "$here/manifests/coredns.yaml" >"$W/manifests/coredns.yaml"
kubectl apply -f "$W/manifests/coredns.yaml" >/dev/null
wait_for "CoreDNS available" 180 kubectl -n kube-system rollout status deployment/coredns --timeout=1s

cat >"$W/env" <<EOF
CLUSTER_RUN=$run
CLUSTER_DIR=$W
KUBECONFIG=$W/admin.kubeconfig
CLUSTER_NS_CP=$ns_cp
CLUSTER_NS_A=${NS[a]}
CLUSTER_NS_B=${NS[b]}
CLUSTER_CP_IP=$CP_IP
CLUSTER_NODE_A_IP=${NODE_IP[a]}
CLUSTER_NODE_B_IP=${NODE_IP[b]}
CLUSTER_POD_CIDR_A=${CIDR[a]}
CLUSTER_POD_CIDR_B=${CIDR[b]}
CLUSTER_CIDR=$CLUSTER_CIDR
CLUSTER_SERVICE_CIDR=$SERVICE_CIDR
CLUSTER_DNS_IP=$DNS_IP
$(cat "$W/images.env")
EOF
trap - ERR
say "up"
echo "$W"
