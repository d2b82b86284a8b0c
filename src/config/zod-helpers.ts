import { z } from 'zod';
import { parseDuration } from '../util/duration.js';
import { SpiffeId } from '../identity/spiffe-id.js';

/** A duration string ("90s", "1h") parsed to milliseconds. */
export const durationMs = z.string().transform((text, ctx) => {
  try {
    return parseDuration(text);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

/** A SPIFFE ID string, validated by the same parser the rest of meshauth uses. */
export const spiffeIdString = z.string().superRefine((text, ctx) => {
  try {
    SpiffeId.parse(text);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `not a valid SPIFFE ID: ${(err as Error).message}` });
  }
});

/** A trust domain name. */
export const trustDomainName = z.string().superRefine((text, ctx) => {
  try {
    SpiffeId.checkTrustDomain(text);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
  }
});
