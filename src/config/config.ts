// The agent's config file. Each layer owns the schema of its own section; this module only
// composes them (and nothing below the agent imports it), so a layer's options live beside it.
import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { trustDomainName } from '../identity/spiffe-id-schemas.js';
import { identityOptionsSchema } from '../identity/options.js';
import { staticClusterSchema } from '../cluster/static-options.js';
import { kubernetesOptionsSchema } from '../cluster/kubernetes/options.js';
import { handshakeOptionsSchema } from '../handshake/handshake-options.js';
import { transportOptionsSchema } from '../datapath/transport/options.js';
import { authOptionsSchema } from '../auth/options.js';
import { datapathOptionsSchema } from '../datapath/gate/options.js';
import { metricsOptionsSchema } from '../metrics/options.js';
import { cniOptionsSchema, controlOptionsSchema } from '../control/options.js';

export const configSchema = z.strictObject({
  /** This node's name, as peers and Kubernetes know it; default $NODE_NAME (the DaemonSet sets it
   *  from the downward API), else the host name. */
  nodeName: z.string().min(1).default(() => process.env.NODE_NAME ?? hostname()),
  /** The trust domain of this node's own identities. */
  trustDomain: trustDomainName.default('cluster.local'),
  /** Persistent state (node keys, dev CA); 0700. */
  stateDir: z.string().default('/var/lib/meshauth'),
  identity: identityOptionsSchema.prefault({
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
  /** The meshauth CNI plugin's spool of pod records. */
  cni: cniOptionsSchema.prefault({}),
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
