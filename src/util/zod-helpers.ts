import { z } from 'zod';
import { parseDuration } from './duration.js';

/** A duration string ("90s", "1h") parsed to milliseconds. */
export const durationMs = z.string().transform((text, ctx) => {
  try {
    return parseDuration(text);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});
