// How the transport modules run `ip` and `wg`: argument arrays (never a shell), optionally
// inside a named network namespace, with key material only on stdin or in a short-lived 0600
// file. Error messages name the command and its arguments (which never hold keys) and the
// tool's stderr, scrubbed of anything shaped like a key in case a tool echoes an input back.
import { accessSync, constants } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { COMMAND_TIMEOUT_MS } from '../../util/command-timeout.js';
import { DatapathError } from '../errors.js';

const NETNS_NAME = /^[A-Za-z0-9_.-]{1,64}$/;

/** Throws unless `name` is a plain network namespace name (it becomes a /run/netns path). */
export function checkNetnsName(name: string): string {
  if (!NETNS_NAME.test(name) || name === '.' || name === '..') throw new DatapathError(`bad network namespace name ${JSON.stringify(name)}`);
  return name;
}

// A WireGuard key (base64 of 32 bytes) or an ESP key in ip's hex form.
const KEY_SHAPES = [/[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=/g, /\b(0x)?[0-9a-fA-F]{32,}\b/g];

/** Replaces anything that looks like key material; for tool output that ends up in an error. */
export function scrubSecrets(text: string): string {
  return KEY_SHAPES.reduce((result, shape) => result.replace(shape, '[redacted]'), text);
}

export interface CommandResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/** One network namespace (or the agent's own when netns is undefined) to run tools in. */
export class NetnsExec {
  readonly netns: string | undefined;

  constructor(
    netns?: string,
    private readonly timeoutMs = COMMAND_TIMEOUT_MS,
  ) {
    this.netns = netns === undefined ? undefined : checkNetnsName(netns);
  }

  /** The argv that runs `command args` in this namespace: nsenter keeps the host's mounts
   *  (/var/run/wireguard sockets), unlike `ip netns exec`, which remounts /sys. */
  argv(command: string, args: readonly string[]): [string, string[]] {
    if (this.netns === undefined) return [command, [...args]];
    return ['nsenter', [`--net=/run/netns/${this.netns}`, command, ...args]];
  }

  /** Runs a tool; rejects with a DatapathError unless it exits 0. */
  async run(command: string, args: readonly string[], input = ''): Promise<string> {
    const result = await this.attempt(command, args, input);
    if (result.exitCode !== 0) throw this.failure(command, args, result);
    return result.stdout;
  }

  /** Runs a tool and returns its outcome whatever the exit status. */
  async attempt(command: string, args: readonly string[], input = ''): Promise<CommandResult> {
    const [file, argv] = command === 'ip' && this.netns !== undefined ? ['ip', ['-n', this.netns, ...args]] : this.argv(command, args);
    const result = await execa(file, argv, { input, reject: false, stripFinalNewline: true, encoding: 'utf8', timeout: this.timeoutMs });
    if (result.timedOut) throw new DatapathError(`${this.describe(command, args)} did not finish within ${this.timeoutMs} ms and was killed`);
    if (result.exitCode === undefined) {
      // Not started at all (ENOENT, EACCES) or killed by a signal.
      throw new DatapathError(`${this.describe(command, args)} could not run: ${result.shortMessage}`);
    }
    return { stdout: result.stdout, stderr: result.stderr, exitCode: result.exitCode };
  }

  /** `ip -batch -` with the lines on stdin; `force` keeps going after a failed line. */
  async ipBatch(lines: readonly string[], options: { force?: boolean } = {}): Promise<CommandResult> {
    if (lines.length === 0) return { stdout: '', stderr: '', exitCode: 0 };
    const args = options.force ? ['-force', '-batch', '-'] : ['-batch', '-'];
    return this.attempt('ip', args, `${lines.join('\n')}\n`);
  }

  failure(command: string, args: readonly string[], result: CommandResult): DatapathError {
    const detail = scrubSecrets(result.stderr.trim()) || `exit status ${result.exitCode}`;
    return new DatapathError(`${this.describe(command, args)} failed: ${detail}`);
  }

  private describe(command: string, args: readonly string[]): string {
    return `${command} ${args.join(' ')}${this.netns === undefined ? '' : ` (netns ${this.netns})`}`;
  }
}

/** The 1-based line numbers `ip -force -batch` reports as failed ("Command failed -:3"). */
export function failedBatchLines(stderr: string): number[] {
  return [...stderr.matchAll(/Command failed -:(\d+)/g)].map((match) => Number(match[1]));
}

/** /run (tmpfs: a key file never reaches a disk) when this process may write there. */
function secretFileBase(): string {
  try {
    accessSync('/run', constants.W_OK);
    return '/run';
  } catch {
    return tmpdir();
  }
}

/**
 * Hands `use` the path of a 0600 file (in a fresh 0700 directory) holding `contents`, and
 * removes both afterwards, overwriting the file first. For tools that open a key file by name:
 * `wg` fopen()s its key and config arguments, and /dev/stdin cannot stand in for them, since
 * Node gives a child's stdin as a socket, which /proc/self/fd/0 refuses to open (ENXIO).
 */
export async function withSecretFile<T>(contents: string, use: (path: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(secretFileBase(), 'meshauth-key-'));
  const path = join(dir, 'secret');
  try {
    await writeFile(path, contents, { mode: 0o600, flag: 'wx' });
    return await use(path);
  } finally {
    await writeFile(path, Buffer.alloc(Buffer.byteLength(contents)), { flag: 'r+' }).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}
