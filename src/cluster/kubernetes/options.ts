import { z } from 'zod';
import { trustDomainName } from '../../identity/spiffe-id-schemas.js';

/**
 * kubernetes: cluster state (pods, nodes, MutualAuthPolicies) from the Kubernetes API. The lead
 * wires this section into the main config schema; until then it is parsed on its own.
 */
export const kubernetesOptionsSchema = z.strictObject({
  enabled: z.boolean().default(false),
  /** A kubeconfig file; default: the in-cluster service account (KUBERNETES_SERVICE_HOST/PORT). */
  kubeconfig: z.string().min(1).optional(),
  /** Trust domain of the workload SPIFFE IDs (spiffe://<td>/ns/<ns>/sa/<sa>); default: the top-level trustDomain. */
  trustDomain: trustDomainName.optional(),
});
export type KubernetesOptions = z.output<typeof kubernetesOptionsSchema>;
