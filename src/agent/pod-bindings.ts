// The pods the CNI plugin registered on this node: which addresses sit behind which host-side
// interface. The binding comes from the pod's network namespace (its veth's peer, read by the
// agent itself, see podPeerInterface), never from the plugin's word alone nor from ARP; it is
// re-checked (the interface must keep its name and index) so a veth deleted and its name reused
// by another pod is not bound to the old pod's identity.
//
// The plugin leaves one record per container in the spool directory before it asks the agent, so
// an agent that was down (installing, upgrading) learns the pods added meanwhile when it starts,
// and the records of pods deleted meanwhile are gone.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { cniAddRequestSchema, type CniAddRequest } from '../control/cni-api.js';
import { normalizeIp } from '../cluster/state.js';
import { interfaceIndexes, podPeerInterface, type BoundInterface } from '../datapath/gate/interface-resolver.js';
import type { Logger } from '../util/logger.js';

export interface PodBinding {
  containerId: string;
  /** The pod, when the runtime named it (the kubelet does, in CNI_ARGS). */
  pod?: { namespace: string; name: string; uid?: string };
  /** "namespace/name": the Kubernetes owner of its endpoints. */
  owner?: string;
  /** Normalized addresses. */
  ips: string[];
  bound: BoundInterface;
  /** The pod's namespace path and interface, to verify again after a restart. */
  netns: string;
  ifName: string;
}

export interface PodBindingsOptions {
  spoolDir: string;
  /** The namespace holding the host-side interfaces (tests, the demo); absent: ours. */
  hostNetns?: string;
  logger: Logger;
}

export class PodBindings {
  private readonly byContainer = new Map<string, PodBinding>();
  private readonly byIp = new Map<string, PodBinding>();

  constructor(private readonly options: PodBindingsOptions) {}

  /** The registered host-side interface of a local address. */
  interfaceOf(ip: string): string | undefined {
    return this.byIp.get(normalizeIp(ip))?.bound.name;
  }

  get(containerId: string): PodBinding | undefined {
    return this.byContainer.get(containerId);
  }

  /** The host-side interfaces of every registered pod. */
  interfaceNames(): string[] {
    return [...this.byContainer.values()].map((binding) => binding.bound.name);
  }

  /**
   * Registers (or registers again: ADD is retried) a container, its interface read from its
   * namespace. An address another container held passes to this one: the runtime's IPAM gave it
   * out again, so the earlier holder is gone (its DEL may have been missed while the agent was down).
   * Returns the binding and the containers it superseded. Throws when the namespace does not show
   * a veth whose other end is on the host.
   */
  async register(request: CniAddRequest): Promise<{ binding: PodBinding; superseded: PodBinding[] }> {
    const bound = await podPeerInterface(request.netns, request.ifName, this.options.hostNetns);
    const binding: PodBinding = {
      containerId: request.containerId,
      ...(request.pod && { pod: request.pod, owner: `${request.pod.namespace}/${request.pod.name}` }),
      ips: [...new Set(request.ips.map(normalizeIp))],
      bound,
      netns: request.netns,
      ifName: request.ifName,
    };
    const superseded = new Set<PodBinding>();
    for (const ip of binding.ips) {
      const holder = this.byIp.get(ip);
      if (holder && holder.containerId !== binding.containerId) superseded.add(holder);
    }
    for (const old of superseded) this.remove(old.containerId);
    this.remove(binding.containerId);
    this.byContainer.set(binding.containerId, binding);
    for (const ip of binding.ips) this.byIp.set(ip, binding);
    return { binding, superseded: [...superseded] };
  }

  remove(containerId: string): PodBinding | undefined {
    const binding = this.byContainer.get(containerId);
    if (!binding) return undefined;
    this.byContainer.delete(containerId);
    for (const ip of binding.ips) if (this.byIp.get(ip) === binding) this.byIp.delete(ip);
    return binding;
  }

  /** The bindings whose interface is gone or was replaced: removed, and returned for revocation. */
  async recheck(): Promise<PodBinding[]> {
    // Those registered before the listing: one registered while it ran may have a newer interface.
    const checked = [...this.byContainer.values()];
    if (checked.length === 0) return [];
    const indexes = await interfaceIndexes(this.options.hostNetns);
    const stale: PodBinding[] = [];
    for (const binding of checked) {
      if (indexes.get(binding.bound.name) === binding.bound.ifindex) continue;
      if (this.byContainer.get(binding.containerId) !== binding) continue; // deleted or re-registered meanwhile
      this.remove(binding.containerId);
      stale.push(binding);
    }
    return stale;
  }

  /**
   * The spool's records, registered (a restart, or pods added while no agent ran). A record that
   * is unreadable, or whose pod's namespace no longer shows its veth, is skipped: logged, counted
   * by the caller, never guessed at.
   */
  async loadSpool(): Promise<{ loaded: PodBinding[]; rejected: number }> {
    let names: string[];
    try {
      names = (await readdir(this.options.spoolDir)).filter((name) => name.endsWith('.json'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { loaded: [], rejected: 0 };
      throw err;
    }
    const loaded: PodBinding[] = [];
    let rejected = 0;
    for (const name of names) {
      try {
        const request = cniAddRequestSchema.parse(JSON.parse(await readFile(join(this.options.spoolDir, name), 'utf8')));
        if (`${request.containerId}.json` !== name) throw new Error('the record names another container');
        loaded.push((await this.register(request)).binding);
      } catch (err) {
        rejected++;
        this.options.logger.warn({ record: name, err: (err as Error).message }, 'CNI spool record not registered');
      }
    }
    return { loaded, rejected };
  }
}
