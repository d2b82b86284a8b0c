// `meshauth status`: asks the running agent over its control socket what it holds and prints it
// as tables, or as the raw AgentStatus JSON with --json.
import type { Command } from 'commander';
import { fetchStatus } from '../control/client.js';
import { DEFAULT_CONTROL_SOCKET } from '../control/server.js';
import { renderStatus } from './status-render.js';

export function registerStatusCommand(program: Command): void {
  program
    .command('status')
    .description("Show the running agent's identities, pairs, peers and datapath counters (exit 1 when no agent answers)")
    .option('--socket <path>', "the agent's control socket", DEFAULT_CONTROL_SOCKET)
    .option('--json', 'print the status as JSON (the control API\'s AgentStatus)')
    .action(async (options: { socket: string; json?: boolean }) => {
      // A ControlClientError is one clear line ("no agent is running ..."), exit 1.
      const status = await fetchStatus({ socketPath: options.socket });
      process.stdout.write(options.json ? `${JSON.stringify(status, null, 2)}\n` : renderStatus(status, new Date()));
    });
}
