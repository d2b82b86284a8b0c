// How the demo runs more of itself in child processes (the agents, `meshauth status`, the
// probes): the same Node binary with the same loader flags (tsx, when running from src/) and the
// sibling module of this one, so it works alike from src/ under tsx and from the built dist/.
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(import.meta.url);
const extension = here.endsWith('.ts') ? '.ts' : '.js';

/** A module of this package, given relative to src/demo/ without its extension. */
export function modulePath(relative: string): string {
  return fileURLToPath(new URL(`${relative}${extension}`, import.meta.url));
}

/** The CLI entry point (src/cli/main.ts or dist/src/cli/main.js). */
export const CLI_MAIN = modulePath('../cli/main');

// Flags that belong to this process only: an --eval script, or a debugger port a child would
// fight over.
const OWN_FLAGS_WITH_VALUE = new Set(['-e', '--eval', '-p', '--print']);
const OWN_FLAGS = /^(-e|--eval|-p|--print|--inspect(-brk|-port|-wait)?|--debug-port)(=|$)/;

/** The Node flags children inherit (loaders such as tsx, memory limits, ...). */
export function inheritedNodeFlags(): string[] {
  const flags: string[] = [];
  const argv = process.execArgv;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    if (OWN_FLAGS_WITH_VALUE.has(flag)) {
      i++;
      continue;
    }
    if (OWN_FLAGS.test(flag)) continue;
    flags.push(flag);
  }
  return flags;
}

/** [file, args] running a module of this package with this Node and its flags. */
export function nodeInvocation(script: string, args: readonly string[]): [string, string[]] {
  return [process.execPath, [...inheritedNodeFlags(), script, ...args]];
}

/** [file, args] of a meshauth CLI command. */
export function cliInvocation(args: readonly string[]): [string, string[]] {
  return nodeInvocation(CLI_MAIN, args);
}

/** How a person at a shell runs this same CLI (for the hints the demo prints). */
export function cliCommandLine(): string {
  const [file, args] = cliInvocation([]);
  return [file, ...args].map(shellQuote).join(' ');
}

export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_./=:@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
