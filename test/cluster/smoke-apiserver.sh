#!/usr/bin/env bash
# Smoke test of the built control plane: etcd on 127.0.0.1 with a temp data
# dir, kube-apiserver against it (self-signed certs, a service-account key
# pair) on 127.0.0.1, then kubectl version and get --raw /readyz. Stops both
# and removes the temp dir. Starts no kubelet or containerd.
#
# Usage: smoke-apiserver.sh   (builds kubernetes and etcd first if missing)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/build.sh" kubernetes etcd >&2
kbin=$("$here/build.sh" --path kubernetes)
ebin=$("$here/build.sh" --path etcd)

work=$(mktemp -d /tmp/meshauth-smoke.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

# Three free loopback ports (other tests share this machine).
read -r etcd_client etcd_peer api_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])
for s in ss: s.close()')

# --- certificates -------------------------------------------------------------
cd "$work"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=meshauth-smoke-ca \
	-keyout ca.key -out ca.crt 2>/dev/null
sign() { # name subject [extfile-lines]
	openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
	printf '%s\n' "${3:-}" >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
		-extfile "$1.ext" -out "$1.crt" 2>/dev/null
}
sign apiserver /CN=kube-apiserver "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc"
sign admin "/O=system:masters/CN=meshauth-smoke-admin" "extendedKeyUsage=clientAuth"
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

# --- etcd -----------------------------------------------------------------------
"$ebin/etcd" --name smoke --data-dir "$work/etcd" \
	--listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
	--listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
	--initial-cluster "smoke=http://127.0.0.1:$etcd_peer" \
	>"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 60); do
	"$ebin/etcdctl" --endpoints "127.0.0.1:$etcd_client" endpoint health >/dev/null 2>&1 && break
	sleep 0.5
done
"$ebin/etcdctl" --endpoints "127.0.0.1:$etcd_client" endpoint health

# --- kube-apiserver ---------------------------------------------------------------
# Required: --etcd-servers; the service-account trio --service-account-issuer,
# --service-account-key-file, --service-account-signing-key-file (it refuses to
# start without any one of them); --tls-cert-file/--tls-private-key-file (else
# it writes a self-signed pair to /var/run/kubernetes that our CA does not
# sign); --client-ca-file (else client certs are not accepted: /readyz still
# answers anonymously, other requests do not).
# Defaulted, given anyway: --bind-address (default 0.0.0.0), --secure-port
# (6443), --service-cluster-ip-range (10.0.0.0/24), --authorization-mode
# (AlwaysAllow). Not given: --advertise-address 127.0.0.1, with which the
# "kubernetes" Endpoints cannot be written (loopback is not allowed); without
# it the host's address is advertised (data only, nothing is sent there).
"$kbin/kube-apiserver" \
	--etcd-servers "http://127.0.0.1:$etcd_client" \
	--bind-address 127.0.0.1 --secure-port "$api_port" \
	--tls-cert-file apiserver.crt --tls-private-key-file apiserver.key \
	--client-ca-file ca.crt \
	--service-account-issuer https://kubernetes.default.svc \
	--service-account-key-file sa.pub --service-account-signing-key-file sa.key \
	--service-cluster-ip-range 10.96.0.0/16 \
	--authorization-mode Node,RBAC \
	>"$work/apiserver.log" 2>&1 &
pids+=($!)

"$kbin/kubectl" config set-cluster smoke --kubeconfig kubeconfig --server "https://127.0.0.1:$api_port" \
	--certificate-authority ca.crt --embed-certs >/dev/null
"$kbin/kubectl" config set-credentials admin --kubeconfig kubeconfig \
	--client-certificate admin.crt --client-key admin.key --embed-certs >/dev/null
"$kbin/kubectl" config set-context smoke --kubeconfig kubeconfig --cluster smoke --user admin >/dev/null
"$kbin/kubectl" config use-context smoke --kubeconfig kubeconfig >/dev/null

start=$(date +%s)
ready=""
for _ in $(seq 120); do
	if ready=$("$kbin/kubectl" --kubeconfig kubeconfig get --raw /readyz 2>/dev/null); then break; fi
	kill -0 "${pids[1]}" 2>/dev/null || { echo "kube-apiserver exited:" >&2; tail -30 "$work/apiserver.log" >&2; exit 1; }
	sleep 1
done
[[ "$ready" == ok ]] || { echo "kube-apiserver not ready after 120 s:" >&2; tail -30 "$work/apiserver.log" >&2; exit 1; }
echo "readyz: $ready after $(($(date +%s) - start)) s"
"$kbin/kubectl" --kubeconfig kubeconfig version
"$kbin/kubectl" --kubeconfig kubeconfig get --raw '/readyz?verbose' | tail -3
"$kbin/kubectl" --kubeconfig kubeconfig get namespaces
echo "smoke: ok"
