import { z } from 'zod';

/** metrics: the Prometheus endpoint, with /healthz and /readyz. */
export const metricsOptionsSchema = z.strictObject({
  enabled: z.boolean().default(true),
  address: z.string().default('0.0.0.0'),
  port: z.number().int().min(0).max(65535).default(9465),
});
