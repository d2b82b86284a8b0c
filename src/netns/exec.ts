// Running tools inside a named network namespace, for the topologies of the demo and the tests.
// nsenter enters only the network namespace, so the command keeps the host's /sys, bpffs pins
// and /var/run/wireguard sockets (`ip netns exec` would give it a fresh /sys in a private mount
// namespace). Every run ends within the shared command timeout unless the caller gives another.
import { execa } from 'execa';
import { COMMAND_TIMEOUT_MS } from '../util/command-timeout.js';

/** argv for nsenter that runs `command args` inside the namespace /run/netns/NETNS. */
export function nsenterArgs(netns: string, command: string, args: readonly string[]): string[] {
  return [`--net=/run/netns/${netns}`, command, ...args];
}

export interface RunOptions {
  input?: string;
  /** false: resolve with the result whatever the exit status (default true: reject on failure). */
  reject?: boolean;
  /** Killed past this (default COMMAND_TIMEOUT_MS). */
  timeout?: number;
}

/** Runs a command inside a network namespace. */
export function inNetns(netns: string, command: string, args: readonly string[], options: RunOptions = {}) {
  return execa('nsenter', nsenterArgs(netns, command, args), {
    input: options.input,
    reject: options.reject ?? true,
    timeout: options.timeout ?? COMMAND_TIMEOUT_MS,
  });
}

/** `ip -batch -` with these lines, inside `netns` (undefined: the host's own namespace). */
export async function ipBatch(netns: string | undefined, lines: readonly string[]): Promise<void> {
  if (lines.length === 0) return;
  await execa('ip', [...(netns === undefined ? [] : ['-n', netns]), '-batch', '-'], { input: `${lines.join('\n')}\n`, timeout: COMMAND_TIMEOUT_MS });
}
