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
