/** Every external tool meshauth runs (ip, tc, wg, bpftool, nsenter, …) ends within this: killed
 *  past it, and the run fails naming the command. A stuck tool must not hold up the agent's plans
 *  or the queue that programs every peer; each of these runs takes well under a second, even
 *  emulated. */
export const COMMAND_TIMEOUT_MS = 30_000;
