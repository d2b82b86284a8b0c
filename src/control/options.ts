import { z } from 'zod';

/** control: the local control socket that `meshauth status` talks to. */
export const controlOptionsSchema = z.strictObject({
  socket: z.string().default('/run/meshauth/control.sock'),
});
