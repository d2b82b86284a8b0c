import { z } from 'zod';
import { durationMs } from '../../util/zod-helpers.js';

const tokenAuth = z.strictObject({
  method: z.literal('token'),
  /** File holding the Vault token (never put the token itself in the config file). */
  tokenFile: z.string().min(1),
});
const kubernetesAuth = z.strictObject({
  method: z.literal('kubernetes'),
  role: z.string().min(1),
  /** Mount path of the Kubernetes auth method. */
  mount: z.string().min(1).default('kubernetes'),
  jwtFile: z.string().default('/var/run/secrets/kubernetes.io/serviceaccount/token'),
});

/** identity.vault: HashiCorp Vault (or OpenBao) PKI secrets engine. */
export const vaultOptionsSchema = z.strictObject({
  /** https://vault.example:8200 */
  address: z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }),
  /** PKI mount path, e.g. "pki" or "pki/int". */
  mount: z.string().min(1).default('pki'),
  /** PKI role allowed to issue the SPIFFE URI SANs (allowed_uri_sans). */
  role: z.string().min(1),
  /**
   * PKI role for this node's own identity, when it is not `role`: a role whose allowed_uri_sans
   * is templated on the login's node name can then issue each node its own node identity only,
   * while `role` is narrowed to workload identities (docs/kubernetes.md, key custody).
   */
  nodeRole: z.string().min(1).optional(),
  /** Requested SVID lifetime (Vault caps it at the role's max_ttl); renewed at 2/3 of it. */
  ttl: durationMs.prefault('1h'),
  /** The certificate's common name: the SPIFFE ID's last path segment (roles usually demand a
   *  CN; it is kept out of the SANs), or none, for roles with require_cn=false. */
  commonName: z.enum(['last-segment', 'none']).default('last-segment'),
  /** Longest wait for one Vault answer. */
  requestTimeout: durationMs.prefault('10s'),
  auth: z.discriminatedUnion('method', [tokenAuth, kubernetesAuth]),
  /** PEM CA file for Vault's own TLS certificate. */
  caFile: z.string().optional(),
  /** Vault Enterprise namespace, sent as X-Vault-Namespace. */
  namespace: z.string().optional(),
});
export type VaultOptions = z.infer<typeof vaultOptionsSchema>;
