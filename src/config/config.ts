import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { durationMs } from '../util/zod-helpers.js';
import { spiffeIdString, trustDomainName } from '../identity/spiffe-id-schemas.js';
import { devOptionsSchema } from '../identity/providers/dev-options.js';
import { fileOptionsSchema } from '../identity/providers/file-options.js';
import { spiffeOptionsSchema } from '../identity/providers/spiffe-options.js';
import { spireDelegatedOptionsSchema } from '../identity/providers/spire-delegated-options.js';
import { vaultOptionsSchema } from '../identity/providers/vault-options.js';
import { staticClusterSchema } from '../cluster/static-options.js';
import { kubernetesOptionsSchema } from '../cluster/kubernetes/options.js';
import { handshakeOptionsSchema } from '../handshake/handshake-options.js';
import { authOptionsSchema, controlOptionsSchema, datapathOptionsSchema, metricsOptionsSchema, transportOptionsSchema } from '../agent/agent-options.js';

const identitySchema = z
  .strictObject({
    provider: z.enum(['dev', 'file', 'spiffe', 'spire-delegated', 'vault']).default('dev'),
    /** The agent's own identity for node ↔ node handshakes; default spiffe://<trustDomain>/meshauth/node/<nodeName>. */
    nodeId: spiffeIdString.optional(),
    /** Allowance for clocks that disagree when checking certificate validity times. */
    clockSkew: durationMs.prefault('30s'),
    /** Longest accepted chain, leaf and intermediates (the trust anchor not counted). */
    maxChainDepth: z.number().int().min(1).max(16).default(5),
    dev: devOptionsSchema.prefault({ ttl: '1h' }),
    file: fileOptionsSchema.optional(),
    spiffe: spiffeOptionsSchema.optional(),
    spireDelegated: spireDelegatedOptionsSchema.optional(),
    vault: vaultOptionsSchema.optional(),
  })
  .superRefine((identity, ctx) => {
    const section = { file: 'file', 'spire-delegated': 'spireDelegated', vault: 'vault' } as const;
    const needed = identity.provider in section ? section[identity.provider as keyof typeof section] : undefined;
    if (needed && identity[needed] === undefined) {
      ctx.addIssue({ code: 'custom', path: [needed], message: `provider "${identity.provider}" needs an identity.${needed} section` });
    }
  });

export const configSchema = z.strictObject({
  /** This node's name, as peers and Kubernetes know it; default $NODE_NAME (the DaemonSet sets it
   *  from the downward API), else the host name. */
  nodeName: z.string().min(1).default(() => process.env.NODE_NAME ?? hostname()),
  /** The trust domain of this node's own identities. */
  trustDomain: trustDomainName.default('cluster.local'),
  /** Persistent state (node keys, dev CA); 0700. */
  stateDir: z.string().default('/var/lib/meshauth'),
  identity: identitySchema.prefault({
    provider: 'dev',
    clockSkew: '30s',
    maxChainDepth: 5,
    dev: { ttl: '1h' },
  }),
  /** Nodes, endpoints and policy when they are not learned from Kubernetes. */
  cluster: staticClusterSchema.prefault({}),
  /** Nodes, endpoints and MutualAuthPolicies from the Kubernetes API. */
  kubernetes: kubernetesOptionsSchema.prefault({}),
  handshake: handshakeOptionsSchema.prefault({}),
  transport: transportOptionsSchema.prefault({}),
  auth: authOptionsSchema.prefault({}),
  datapath: datapathOptionsSchema.prefault({}),
  metrics: metricsOptionsSchema.prefault({}),
  control: controlOptionsSchema.prefault({}),
});

/** The input form (durations as strings) and the parsed form (milliseconds). */
export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Validates an already-parsed object; errors name the path and the expected form. */
export function parseConfig(input: unknown, source = 'config'): Config {
  const result = configSchema.safeParse(input ?? {});
  if (!result.success) {
    const lines = result.error.issues.map((issue) => `  ${issue.path.length ? issue.path.join('.') : '(top level)'}: ${issue.message}`);
    throw new ConfigError(`${source} is invalid:\n${lines.join('\n')}`);
  }
  return result.data;
}

/** Reads and validates a YAML config file. */
export async function loadConfigFile(path: string): Promise<Config> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let document: unknown;
  try {
    document = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${path} is not valid YAML: ${(err as Error).message}`);
  }
  return parseConfig(document, `config file ${path}`);
}

/** The node identity the config names, or the default derived from trust domain and node name. */
export function nodeIdentity(config: Config): string {
  return config.identity.nodeId ?? `spiffe://${config.trustDomain}/meshauth/node/${config.nodeName}`;
}
