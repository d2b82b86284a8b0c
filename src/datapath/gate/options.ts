import { z } from 'zod';

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
