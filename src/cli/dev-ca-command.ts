import type { Command } from 'commander';

// Placeholder until the dev-ca subcommands land (being written now).
export function registerDevCaCommands(_program: Command): void {}
