#!/usr/bin/env node
// The meshauth command line. Each subcommand lives in its own module and registers itself here.
import { Command, CommanderError } from 'commander';
import { registerSvidCommands } from './svid-command.js';
import { registerDevCaCommands } from './dev-ca-command.js';
import { registerDatapathCommands } from './datapath-command.js';
import { registerStatusCommand } from './status-command.js';
import { registerAgentCommand } from './agent-command.js';
import { registerDemoCommand } from './demo-command.js';
import { UsageError } from './errors.js';

const program = new Command('meshauth')
  .description('Sidecar-free mutual authentication for Kubernetes workloads')
  .version(process.env.npm_package_version ?? '0.1.0')
  .showHelpAfterError()
  .exitOverride();

registerSvidCommands(program);
registerDevCaCommands(program);
registerDatapathCommands(program);
registerStatusCommand(program);
registerAgentCommand(program);
registerDemoCommand(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Help and version exit 0; every other commander error is a usage error (exit 2).
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else if (err instanceof UsageError) {
    console.error(`meshauth: ${err.message}`);
    process.exitCode = 2;
  } else {
    console.error(`meshauth: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  }
}
