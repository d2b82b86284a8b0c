import type { Command } from 'commander';

// Placeholder until the svid subcommands land (being written now).
export function registerSvidCommands(_program: Command): void {}
