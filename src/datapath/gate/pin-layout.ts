// The pin directory of one gate, /sys/fs/bpf/meshauth by default (DEFAULT_PIN_DIR; pinDir /
// --pin-dir choose another, so that tests and two agents on one machine keep apart):
//
//   <pin dir>/maps/<map>              the maps (created once, reused by every later load)
//   <pin dir>/progs/<generation>/     from_workload, to_workload of the latest load
//   <pin dir>/interfaces/<name@netns> one directory per interface the gate was attached to,
//                                     holding its TCX links (ingress, egress) where it uses TCX
//
// bpffs holds only pins and directories, so the interface registry is a set of directory names;
// it is what `uninstall` walks, and it survives the agent.
import { isAbsolute, join } from 'node:path';
import { DatapathError } from '../errors.js';
import type { MapName } from './layout.js';
import { netnsPath } from './run-in.js';

export const DEFAULT_PIN_DIR = '/sys/fs/bpf/meshauth';

export interface WorkloadInterface {
  /** Host-side interface of the workload (e.g. the host end of its veth). */
  name: string;
  /** Network namespace holding that interface: a name under /run/netns or an absolute path; absent = ours. */
  netns?: string;
}

const IFNAME = /^[A-Za-z0-9_.:+-]{1,15}$/;

export function validateInterface(iface: WorkloadInterface): void {
  if (!IFNAME.test(iface.name) || iface.name === '.' || iface.name === '..') {
    throw new DatapathError(`bad interface name ${JSON.stringify(iface.name)}`);
  }
  if (iface.netns !== undefined) netnsPath(iface.netns);
}

export function describeInterface(iface: WorkloadInterface): string {
  return iface.netns === undefined ? iface.name : `${iface.name}@${iface.netns}`;
}

/** URI-encoded, dots included: bpffs refuses names with a dot (EPERM, reserved for itself). */
function encodeForBpffs(text: string): string {
  return encodeURIComponent(text).replaceAll('.', '%2E');
}

/** The paths under one pin directory. */
export class PinLayout {
  readonly mapsDir: string;
  readonly progsDir: string;
  readonly interfacesDir: string;

  constructor(readonly root: string) {
    if (!isAbsolute(root) || /\s/.test(root)) {
      throw new DatapathError(`pin dir must be an absolute path without spaces, got ${JSON.stringify(root)}`);
    }
    this.mapsDir = join(root, 'maps');
    this.progsDir = join(root, 'progs');
    this.interfacesDir = join(root, 'interfaces');
  }

  mapPath(name: MapName): string {
    return join(this.mapsDir, name);
  }

  /** The interface's registry entry: a directory, holding the gate's TCX links where it has them. */
  interfaceEntry(iface: WorkloadInterface): string {
    return join(this.interfacesDir, `${encodeForBpffs(iface.name)}@${encodeForBpffs(iface.netns ?? '')}`);
  }
}
