import { z } from 'zod';

const capacity = z.number().int().min(1).max(2 ** 31);

/** datapath: the eBPF gate. */
export const datapathOptionsSchema = z.strictObject({
  enabled: z.boolean().default(true),
  /** bpffs directory of the pinned maps and programs; one per agent. */
  pinDir: z.string().default('/sys/fs/bpf/meshauth'),
  /** Network namespace holding the workloads' host-side interfaces (default: the agent's own). */
  netns: z.string().optional(),
  /** How the gate hooks interfaces: tcx (Linux 6.6+), tc (cls_bpf on clsact), auto: tcx where available. */
  attach: z.enum(['auto', 'tcx', 'tc']).default('auto'),
  /**
   * Map capacities, used when a map is created (a pinned map keeps its own: `meshauth datapath
   * uninstall` to resize). Absent: the defaults of layout.ts MAP_SPECS, fit for 150,000 pods and
   * 5,000 nodes. The auth map's is auth.cacheSize. Memory cost: src/datapath/gate/README.md.
   */
  capacities: z
    .strictObject({
      /** IPv4 host addresses (pod IPs) in the ipcache. */
      ipcacheHosts4: capacity.optional(),
      /** IPv6 host addresses (pod IPs) in the ipcache. */
      ipcacheHosts6: capacity.optional(),
      /** Shorter prefixes in the ipcache (an LPM trie, allocated as filled). */
      ipcachePrefixes: capacity.optional(),
      /** Addresses of this node's workloads bound to their interfaces. */
      endpoints: capacity.optional(),
      /** Policy exceptions to the default, per (local, remote, direction) identity pair. */
      policy: capacity.optional(),
      /** Keys with a recent "authentication required" signal. */
      ratelimit: capacity.optional(),
      /** Queued signals. */
      signals: capacity.optional(),
    })
    .default({}),
});

export type DatapathCapacityOptions = z.output<typeof datapathOptionsSchema>['capacities'];
