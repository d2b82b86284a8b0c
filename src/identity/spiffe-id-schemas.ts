import { z } from 'zod';
import { SpiffeId } from './spiffe-id.js';

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
