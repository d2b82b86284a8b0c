import { z } from 'zod';
import { durationMs } from '../util/zod-helpers.js';

/** auth: the cache of authenticated pairs and when they are re-authenticated. */
export const authOptionsSchema = z.strictObject({
  /** Authenticate pairs policy requires as soon as both endpoints exist; false: only on demand
   *  (when the gate signals a dropped packet), for clusters with very many possible pairs. */
  proactive: z.boolean().default(true),
  /** Pairs held at most (the BPF auth map is sized to match). */
  cacheSize: z.number().int().min(16).max(4_194_304).default(524_288),
  /** Re-authenticate at this fraction of a pair's lifetime ... */
  reauthFraction: z.number().gt(0).lt(1).default(2 / 3),
  /** ... spread over this fraction of the lifetime, centred on it. */
  reauthJitter: z.number().min(0).max(0.5).default(0.2),
  /** Backoff after a failed authentication of a pair. */
  failureBackoff: z.strictObject({ initial: durationMs.prefault('1s'), max: durationMs.prefault('60s') }).prefault({}),
  /** How long the node that is not the proactive initiator of a pair waits before initiating itself. */
  proactiveGrace: durationMs.prefault('2s'),
  /** How often the cache and the BPF map are compared and drift repaired. */
  reconcileInterval: durationMs.prefault('60s'),
});

/** metrics: the Prometheus endpoint, with /healthz and /readyz. */
export const metricsOptionsSchema = z.strictObject({
  enabled: z.boolean().default(true),
  address: z.string().default('0.0.0.0'),
  port: z.number().int().min(0).max(65535).default(9465),
});

/** control: the local control socket that `meshauth status` talks to. */
export const controlOptionsSchema = z.strictObject({
  socket: z.string().default('/run/meshauth/control.sock'),
});

/** datapath: the eBPF gate. */
export const datapathOptionsSchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** bpffs directory of the pinned maps and programs; one per agent. */
  pinDir: z.string().default('/sys/fs/bpf/meshauth'),
  /** Network namespace holding the workloads' host-side interfaces (default: the agent's own). */
  netns: z.string().optional(),
  /** How the gate hooks interfaces: tcx (Linux 6.6+), tc (cls_bpf on clsact), auto: tcx where available. */
  attach: z.enum(['auto', 'tcx', 'tc']).default('auto'),
});

/** transport: how payload travels between nodes, keyed by the node handshakes. */
export const transportOptionsSchema = z.strictObject({
  /** wireguard or ipsec: meshauth programs the tunnel; none: the CNI carries traffic (pairs are still gated). */
  mode: z.enum(['wireguard', 'ipsec', 'none']).default('wireguard'),
  wireguard: z
    .strictObject({
      interface: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, '1-15 of A-Z a-z 0-9 _ . -').default('meshauth0'),
      listenPort: z.number().int().min(1).max(65535).default(51820),
      /** kernel (production), userspace (wireguard-go), or auto: the kernel module when available. */
      implementation: z.enum(['kernel', 'userspace', 'auto']).default('auto'),
      mtu: z.number().int().min(1280).max(65535).default(1420),
    })
    .prefault({}),
});
