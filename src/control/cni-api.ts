// The requests the meshauth CNI plugin (src/cni/) sends the agent over the control socket, and the
// answers. The plugin runs once per pod and must start fast, so it imports only these types; the
// agent validates every request against the schemas here before acting on it.
import { isIP } from 'node:net';
import { z } from 'zod';

/** POST bodies on these paths; each answers JSON. */
export const CNI_PATHS = { add: '/v1/cni/add', del: '/v1/cni/del', check: '/v1/cni/check' } as const;

/** Runtimes name containers with hex IDs (containerd, CRI-O) or similar; nothing else is a file name. */
const containerId = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/, 'not a container ID');
const ipAddress = z.string().refine((text) => isIP(text) !== 0, 'not an IP address');
/** An interface name as the kernel allows it (IFNAMSIZ 16, no '/' or whitespace). */
const interfaceName = z.string().regex(/^[^\s/:]{1,15}$/, 'not an interface name');
const k8sName = z.string().min(1).max(253);

export const cniPodSchema = z.strictObject({ namespace: k8sName, name: k8sName, uid: z.string().max(128).optional() });

/** ADD: a pod's sandbox was wired by the main CNI; where and as what. */
export const cniAddRequestSchema = z.strictObject({
  containerId,
  /** The pod's network namespace (CNI_NETNS), where the agent reads its interface's veth peer. */
  netns: z.string().startsWith('/').max(4096),
  /** The pod-side interface (CNI_IFNAME). */
  ifName: interfaceName,
  pod: cniPodSchema.optional(),
  /** The pod's addresses, from the main plugin's result. */
  ips: z.array(ipAddress).min(1).max(16),
  /** How long the agent may hold the answer for the pod's pairs (0: answer at once); the
   *  plugin's bound (10 s) is well inside the control server's 30 s idle-socket timeout. */
  waitMs: z.number().int().min(0).max(10_000),
});
export type CniAddRequest = z.infer<typeof cniAddRequestSchema>;

export const cniDelRequestSchema = z.strictObject({ containerId });
export type CniDelRequest = z.infer<typeof cniDelRequestSchema>;

export const cniCheckRequestSchema = z.strictObject({ containerId });
export type CniCheckRequest = z.infer<typeof cniCheckRequestSchema>;

/**
 * ADD's answer. `ready`: every pair the pod's identities need with existing endpoints is
 * authenticated; `pending`: how many are not yet (the wait ran out: the pod starts gated and
 * they complete later). `bound` names the host-side interface the gate binds.
 */
export interface CniAddResponse {
  ready: boolean;
  pending: number;
  bound: { name: string; ifindex: number };
}

export interface CniDelResponse {
  /** Whether the agent held the container (false: already gone; DEL is idempotent). */
  removed: boolean;
}

export interface CniCheckResponse {
  ok: boolean;
  /** Why not, when not ok. */
  reason?: string;
}
