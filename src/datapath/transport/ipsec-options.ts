// The IPsec transport's options (SA lifetimes, the make-before-break timings, the policy
// priority), with their defaults, checked before anything is programmed.
import type { Logger } from '../../util/logger.js';
import { DatapathError } from '../errors.js';
import type { TransportMetrics } from './metrics.js';
import type { Lifetime } from './xfrm.js';

export interface IpsecLifetimeOptions {
  softSeconds: number;
  hardSeconds: number;
  softBytes: number | bigint;
  hardBytes: number | bigint;
  softPackets: number | bigint;
  hardPackets: number | bigint;
}

/**
 * Defaults: keys are replaced at every node re-authentication, which the agent does well within
 * an hour (before certificates expire); the kernel retires an SA that outlives 4 h anyway.
 * The byte and packet limits only bound a runaway SA (with 64-bit sequence numbers, nothing
 * else would).
 */
export const DEFAULT_LIFETIME: IpsecLifetimeOptions = {
  softSeconds: 3 * 3600,
  hardSeconds: 4 * 3600,
  softBytes: 2n ** 50n,
  hardBytes: 2n ** 51n,
  softPackets: 2n ** 40n,
  hardPackets: 2n ** 41n,
};

export interface IpsecOptions {
  /** Run everything inside /run/netns/<netns> (tests put each node in its own namespace). */
  netns?: string;
  lifetime?: Partial<IpsecLifetimeOptions>;
  /** Re-keying: wait between the new inbound and the new outbound state; default 1000 ms. */
  switchDelayMs?: number;
  /** Re-keying: how long the old states stay after the switch; default 10 s. */
  retireAfterMs?: number;
  /** Policy priority (lower wins); default 1000. */
  policyPriority?: number;
  logger?: Logger;
  metrics?: TransportMetrics;
}

function lifetimeOf(options: Partial<IpsecLifetimeOptions> = {}): Lifetime {
  const merged = { ...DEFAULT_LIFETIME, ...options };
  const seconds = (value: number, name: string) => {
    if (!Number.isInteger(value) || value < 1) throw new DatapathError(`IPsec lifetime ${name} must be a positive number of seconds`);
    return value;
  };
  const count = (value: number | bigint, name: string) => {
    const big = typeof value === 'bigint' ? value : Number.isInteger(value) ? BigInt(value) : -1n;
    if (big < 1n || big >= 2n ** 64n) throw new DatapathError(`IPsec lifetime ${name} must be a positive 64-bit count`);
    return big;
  };
  const lifetime = {
    softSeconds: seconds(merged.softSeconds, 'softSeconds'),
    hardSeconds: seconds(merged.hardSeconds, 'hardSeconds'),
    softBytes: count(merged.softBytes, 'softBytes'),
    hardBytes: count(merged.hardBytes, 'hardBytes'),
    softPackets: count(merged.softPackets, 'softPackets'),
    hardPackets: count(merged.hardPackets, 'hardPackets'),
  };
  if (lifetime.softSeconds > lifetime.hardSeconds || lifetime.softBytes > lifetime.hardBytes || lifetime.softPackets > lifetime.hardPackets) {
    throw new DatapathError('IPsec lifetime: every soft limit must be at most its hard limit');
  }
  return lifetime;
}

function nonNegativeMs(value: number | undefined, fallback: number, name: string): number {
  const ms = value ?? fallback;
  if (!Number.isFinite(ms) || ms < 0) throw new DatapathError(`IPsec ${name} must be a non-negative number of milliseconds`);
  return ms;
}

/** The options with their defaults, each checked; a bad one throws a DatapathError naming it. */
export function checkedOptions(options: IpsecOptions): { lifetime: Lifetime; switchDelayMs: number; retireAfterMs: number; priority: number } {
  const lifetime = lifetimeOf(options.lifetime);
  const switchDelayMs = nonNegativeMs(options.switchDelayMs, 1000, 'switchDelayMs');
  const retireAfterMs = nonNegativeMs(options.retireAfterMs, 10_000, 'retireAfterMs');
  const priority = options.policyPriority ?? 1000;
  if (!Number.isInteger(priority) || priority < 0 || priority > 0xffff_ffff) throw new DatapathError('IPsec policyPriority must be a 32-bit unsigned integer');
  return { lifetime, switchDelayMs, retireAfterMs, priority };
}
