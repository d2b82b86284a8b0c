// How the datapath runs its command-line tools (bpftool, tc, ip, meshauth-tcx): argument arrays
// (never a shell), optionally inside a network namespace, failing with the tool's own stderr.
import { isAbsolute } from 'node:path';
import { execa } from 'execa';
import { COMMAND_TIMEOUT_MS } from '../../util/command-timeout.js';
import { DatapathError } from '../errors.js';

const NETNS_NAME = /^[A-Za-z0-9_.-]{1,255}$/;

/** /run/netns/NAME for a name, the path itself for an absolute path; throws on anything else. */
export function netnsPath(netns: string): string {
  if (isAbsolute(netns)) {
    if (/\s/.test(netns)) throw new DatapathError(`bad network namespace path ${JSON.stringify(netns)}`);
    return netns;
  }
  if (!NETNS_NAME.test(netns) || netns === '.' || netns === '..') {
    throw new DatapathError(`bad network namespace name ${JSON.stringify(netns)}`);
  }
  return `/run/netns/${netns}`;
}

export async function run(file: string, args: string[], input?: string, timeoutMs = COMMAND_TIMEOUT_MS): Promise<string> {
  try {
    const result = await execa(file, args, { input, stripFinalNewline: true, timeout: timeoutMs });
    return result.stdout;
  } catch (err) {
    if ((err as { timedOut?: boolean }).timedOut) throw new DatapathError(`${file} ${args.join(' ')} did not finish within ${timeoutMs} ms and was killed`, { cause: err });
    const stderr = (err as { stderr?: unknown }).stderr;
    const detail = typeof stderr === 'string' && stderr.trim() !== '' ? stderr.trim() : (err as Error).message;
    throw new DatapathError(`${file} ${args.join(' ')} failed: ${detail}`, { cause: err });
  }
}

/**
 * A tool inside a network namespace (or ours). `tc -n NS` and `ip netns exec` would give tc a
 * fresh /sys in a private mount namespace, where the bpffs pins are invisible; nsenter enters
 * only the network namespace.
 */
export function runIn(netns: string | undefined, file: string, args: string[], input?: string): Promise<string> {
  if (netns === undefined) return run(file, args, input);
  return run('nsenter', [`--net=${netnsPath(netns)}`, file, ...args], input);
}
