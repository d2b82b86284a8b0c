#!/usr/bin/env bash
# Installs meshauth into a cluster made by up.sh the way docs/kubernetes.md
# says (dev CA, `kubectl apply -k`), through an overlay of deploy/ that changes
# only what this cluster needs:
#
# - the image: the meshauth image up.sh imported, pinned by its digest;
# - the config: transport.mode none. This machine's kernel has no WireGuard
#   module (and no ESP): the DaemonSet's transport needs the kernel's
#   (docs/kubernetes.md, Requirements), so pairs are authenticated and gated
#   but carried by the pod network unencrypted;
# - the ServiceMonitor is left out (no Prometheus Operator CRDs here: the
#   checks scrape with a plain Prometheus);
# - the dev CA Secret, made with `meshauth dev-ca init`, as a secretGenerator.
#
# Usage: install-meshauth.sh CLUSTER_DIR [--dry-run]   (prints the overlay dir)
#   --dry-run: write the overlay, apply nothing.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
W=$1
# shellcheck source=/dev/null
. "$W/env"
kubectl() { "$W/bin/kubectl" "$@"; }

digest=$("$W/bin/node-exec" a ctr --address /run/containerd/containerd.sock -n k8s.io images ls "name==$IMAGE_MESHAUTH" 2>/dev/null |
	awk 'NR == 2 { print $3 }')
[[ "$digest" == sha256:* ]] || { echo "install-meshauth.sh: no digest for $IMAGE_MESHAUTH on node-a" >&2; exit 1; }
# containerd's CRI finds an image by a digest reference only under a name of that form (an
# imported image has only its tag): as a pull by digest would have named it.
for n in a b; do
	"$W/bin/node-exec" "$n" ctr --address /run/containerd/containerd.sock -n k8s.io images tag --force \
		"$IMAGE_MESHAUTH" "${IMAGE_MESHAUTH%:*}@$digest" >/dev/null 2>&1
done

o="$W/overlay"
mkdir -p "$o"
# kustomize takes only relative paths to a base.
base=$(realpath --relative-to="$o" "$repo/deploy")
[[ -f "$o/dev-ca/ca.pem" ]] || node "$repo/dist/src/cli/main.js" dev-ca init --trust-domain cluster.local --dir "$o/dev-ca" >/dev/null
cat >"$o/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base
images:
  - name: meshauth
    newName: ${IMAGE_MESHAUTH%:*}
    digest: $digest
secretGenerator:
  - name: meshauth-dev-ca
    namespace: meshauth-system
    files: [dev-ca/ca.pem, dev-ca/ca.key]
    options: {disableNameSuffixHash: true}
patches:
  - patch: |-
      \$patch: delete
      apiVersion: monitoring.coreos.com/v1
      kind: ServiceMonitor
      metadata: {name: meshauth, namespace: meshauth-system}
  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata: {name: meshauth-config, namespace: meshauth-system}
      data:
        config.yaml: |
          trustDomain: cluster.local
          stateDir: /var/lib/meshauth
          identity:
            provider: dev
            dev:
              caDir: /etc/meshauth-secrets/dev-ca
              ttl: 1h
          kubernetes:
            enabled: true
          transport:
            mode: none
          cluster:
            policy:
              default: disabled
EOF
if [[ "${2:-}" != "--dry-run" ]]; then
	kubectl apply -k "$o" >&2
fi
echo "$o"
