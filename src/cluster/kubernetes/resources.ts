// The three Kubernetes resources the agent watches, and the MutualAuthPolicy custom resource's
// names. deploy/crd-mutualauthpolicy.yaml declares the same names; test/deploy-manifests.test.ts
// checks that they agree.

export const POLICY_GROUP = 'meshauth.io';
export const POLICY_VERSION = 'v1alpha1';
export const POLICY_KIND = 'MutualAuthPolicy';
export const POLICY_PLURAL = 'mutualauthpolicies';

export type WatchedResource = 'pods' | 'nodes' | 'policies';

/** Cluster-wide list/watch paths (the agent needs every pod, not only its node's: remote endpoints matter too). */
export const RESOURCE_PATHS: Readonly<Record<WatchedResource, string>> = {
  pods: '/api/v1/pods',
  nodes: '/api/v1/nodes',
  policies: `/apis/${POLICY_GROUP}/${POLICY_VERSION}/${POLICY_PLURAL}`,
};
