import { z } from 'zod';
import { durationMs } from '../../config/zod-helpers.js';

const tokenAuth = z.strictObject({
  method: z.literal('token'),
  /** File holding the Vault token (never put the token itself in the config file). */
  tokenFile: z.string(),
});
const kubernetesAuth = z.strictObject({
  method: z.literal('kubernetes'),
  role: z.string(),
  /** Mount path of the Kubernetes auth method. */
  mount: z.string().default('kubernetes'),
  jwtFile: z.string().default('/var/run/secrets/kubernetes.io/serviceaccount/token'),
});

/** identity.vault: HashiCorp Vault (or OpenBao) PKI secrets engine. */
export const vaultOptionsSchema = z.strictObject({
  /** https://vault.example:8200 */
  address: z.url(),
  /** PKI mount path, e.g. "pki". */
  mount: z.string().default('pki'),
  /** PKI role allowed to issue the SPIFFE URI SANs. */
  role: z.string(),
  ttl: durationMs.prefault('1h'),
  auth: z.discriminatedUnion('method', [tokenAuth, kubernetesAuth]),
  /** PEM CA file for Vault's own TLS certificate. */
  caFile: z.string().optional(),
  /** Vault Enterprise namespace, sent as X-Vault-Namespace. */
  namespace: z.string().optional(),
});
export type VaultOptions = z.infer<typeof vaultOptionsSchema>;
