import { z } from 'zod';

/** control: the local control socket that `meshauth status` talks to. */
export const controlOptionsSchema = z.strictObject({
  socket: z.string().default('/run/meshauth/control.sock'),
});

/** cni: where the meshauth CNI plugin leaves its records (the plugin's `spoolDir`, same default). */
export const cniOptionsSchema = z.strictObject({
  spoolDir: z.string().startsWith('/').default('/run/meshauth/cni'),
});
