#!/usr/bin/env node
// The meshauth CNI plugin: chained after the pod network's main plugin (its conflist's `plugins`
// list), it tells the local agent which pod now has which addresses behind which interface, the
// binding the gate enforces, taken from the runtime and the main plugin's result, never guessed
// from ARP or the bridge's forwarding table. It follows the CNI spec (containernetworking/cni
// SPEC.md): ADD, DEL, CHECK, VERSION; the main plugin's result (`prevResult`) goes out untouched.
//
// It runs once per pod, so it is one file with only Node's own modules (no start-up cost of the
// agent's dependencies), and it never stands in the way of a pod: with the agent down or slow,
// ADD still succeeds (the record left in the spool directory is picked up when the agent starts,
// and the pod is authenticated then). DEL is the exception that keeps addresses honest: with an
// agent running, DEL succeeds only once the agent has revoked the pod's addresses and pairs, so
// the runtime retries it rather than letting the address go to a new pod while it is still
// mapped to the old identity.
import { mkdir, rename, rm, writeFile, access } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { CniAddRequest, CniAddResponse, CniCheckResponse } from '../control/cni-api.js';

/** The CNI spec versions whose configs carry a prevResult (chaining came with 0.3.0). */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];

/** CNI's well-known error codes (SPEC.md "Error"); 100 and up are the plugin's own. */
const ERROR = { incompatibleVersion: 1, invalidEnvironment: 4, decode: 6, invalidConfig: 7, tryAgainLater: 11, checkFailed: 100 } as const;

/** The wait for the pod's pairs, when the config names none; the spec's bound is 2 s. */
export const DEFAULT_READY_TIMEOUT_MS = 2000;
const MAX_READY_TIMEOUT_MS = 10_000;
/** DEL and CHECK: a live agent answers these in milliseconds. */
const REQUEST_TIMEOUT_MS = 5000;

export interface PluginConfig {
  cniVersion: string;
  controlSocket: string;
  spoolDir: string;
  readyTimeoutMs: number;
  prevResult?: PrevResult;
}

interface PrevResult {
  interfaces?: { name?: string; sandbox?: string }[];
  ips?: { address?: string; interface?: number }[];
}

export class CniError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly details?: string,
  ) {
    super(message);
    this.name = 'CniError';
  }
}

export interface PluginOutcome {
  /** What goes to stdout (a result, a version answer, an error object, or nothing). */
  stdout: string;
  exitCode: 0 | 1;
  /** Lines for stderr: the runtime logs them. */
  warnings: string[];
}

/** One invocation, as the runtime makes it: the CNI environment and the network config on stdin. */
export async function runPlugin(env: NodeJS.ProcessEnv, stdin: string): Promise<PluginOutcome> {
  const warnings: string[] = [];
  let version = '1.1.0';
  try {
    const config = parseConfig(stdin);
    version = config.cniVersion;
    const command = env.CNI_COMMAND;
    if (command === 'VERSION') return ok(JSON.stringify({ cniVersion: version, supportedVersions: SUPPORTED_VERSIONS }));
    if (!SUPPORTED_VERSIONS.includes(version)) throw new CniError(ERROR.incompatibleVersion, `CNI version ${version} is not supported`, `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
    const containerId = required(env, 'CNI_CONTAINERID');
    switch (command) {
      case 'ADD':
        await add(config, env, containerId, warnings);
        return ok(JSON.stringify(config.prevResult));
      case 'DEL':
        await del(config, containerId, warnings);
        return ok('');
      case 'CHECK':
        if (version === '0.3.0' || version === '0.3.1') throw new CniError(ERROR.incompatibleVersion, `CHECK needs CNI version 0.4.0 or later, not ${version}`);
        await check(config, containerId, warnings);
        return ok('');
      default:
        throw new CniError(ERROR.invalidEnvironment, `unknown CNI_COMMAND ${JSON.stringify(command ?? '')}`);
    }
  } catch (err) {
    const error = err instanceof CniError ? err : new CniError(ERROR.tryAgainLater, (err as Error).message);
    const body = { cniVersion: version, code: error.code, msg: error.message, ...(error.details !== undefined && { details: error.details }) };
    return { stdout: JSON.stringify(body), exitCode: 1, warnings };
  }

  function ok(stdout: string): PluginOutcome {
    return { stdout, exitCode: 0, warnings };
  }
}

export function parseConfig(stdin: string): PluginConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch {
    throw new CniError(ERROR.decode, 'the network configuration on stdin is not JSON');
  }
  if (typeof raw !== 'object' || raw === null) throw new CniError(ERROR.decode, 'the network configuration is not a JSON object');
  const conf = raw as Record<string, unknown>;
  const text = (key: string, fallback: string): string => {
    const value = conf[key] ?? fallback;
    if (typeof value !== 'string' || !value.startsWith('/')) throw new CniError(ERROR.invalidConfig, `${key} must be an absolute path`);
    return value;
  };
  const timeout = conf.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  if (typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout < 0 || timeout > MAX_READY_TIMEOUT_MS) {
    throw new CniError(ERROR.invalidConfig, `readyTimeoutMs must be an integer from 0 to ${MAX_READY_TIMEOUT_MS}`);
  }
  if (typeof conf.cniVersion !== 'string') throw new CniError(ERROR.invalidConfig, 'cniVersion is missing');
  return {
    cniVersion: conf.cniVersion,
    controlSocket: text('controlSocket', '/run/meshauth/control.sock'),
    spoolDir: text('spoolDir', '/run/meshauth/cni'),
    readyTimeoutMs: timeout,
    ...(conf.prevResult !== undefined && { prevResult: conf.prevResult as PrevResult }),
  };
}

/** K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from CNI_ARGS ("K=V;K=V"), when the runtime is the kubelet's. */
export function podOf(cniArgs: string | undefined): CniAddRequest['pod'] {
  const args = new Map<string, string>();
  for (const pair of (cniArgs ?? '').split(';')) {
    const at = pair.indexOf('=');
    if (at > 0) args.set(pair.slice(0, at), pair.slice(at + 1));
  }
  const namespace = args.get('K8S_POD_NAMESPACE');
  const name = args.get('K8S_POD_NAME');
  if (!namespace || !name) return undefined;
  const uid = args.get('K8S_POD_UID');
  return { namespace, name, ...(uid && { uid }) };
}

/**
 * The pod's addresses in the main plugin's result: those of interfaces inside the sandbox (a
 * bridge plugin also reports the bridge's and the host veth's, which carry no pod address), or
 * every address when the result does not say which interface holds it.
 */
export function podAddresses(prevResult: PrevResult | undefined): string[] {
  const interfaces = prevResult?.interfaces ?? [];
  const addresses = (prevResult?.ips ?? []).filter((ip) => ip.interface === undefined || interfaces[ip.interface]?.sandbox !== undefined);
  return [...new Set(addresses.map((ip) => ip.address?.split('/')[0]).filter((ip): ip is string => typeof ip === 'string' && ip !== ''))];
}

async function add(config: PluginConfig, env: NodeJS.ProcessEnv, containerId: string, warnings: string[]): Promise<void> {
  if (config.prevResult === undefined) throw new CniError(ERROR.invalidConfig, 'meshauth is a chained plugin: list it after the main plugin, which produces the prevResult');
  const ips = podAddresses(config.prevResult);
  if (ips.length === 0) {
    warnings.push('meshauth: the main plugin gave the pod no address; nothing to gate');
    return;
  }
  const pod = podOf(env.CNI_ARGS);
  const body: CniAddRequest = {
    containerId,
    netns: required(env, 'CNI_NETNS'),
    ifName: required(env, 'CNI_IFNAME'),
    ...(pod && { pod }),
    ips,
    waitMs: config.readyTimeoutMs,
  };
  // The record first: an agent that is down (installing, upgrading) reads it when it starts.
  await writeSpool(config.spoolDir, containerId, { ...body, waitMs: 0 });
  try {
    const answer = (await post(config.controlSocket, '/v1/cni/add', body, config.readyTimeoutMs + REQUEST_TIMEOUT_MS)) as CniAddResponse;
    if (!answer.ready) warnings.push(`meshauth: ${answer.pending} pair(s) of the pod not authenticated yet (refused by a peer that does not know the pod yet, or not done within ${config.readyTimeoutMs} ms); it starts gated and they follow`);
  } catch (err) {
    // Never fail a pod for meshauth: it starts gated (or, with no agent yet, is registered from
    // the spool when the agent starts).
    warnings.push(`meshauth: the agent did not take the pod (${(err as Error).message}); registered from the spool when it can`);
  }
}

async function del(config: PluginConfig, containerId: string, warnings: string[]): Promise<void> {
  await rm(spoolFile(config.spoolDir, containerId), { force: true });
  try {
    await post(config.controlSocket, '/v1/cni/del', { containerId }, REQUEST_TIMEOUT_MS);
  } catch (err) {
    // No agent: nothing holds the pod here, and a starting agent learns from the spool that the
    // container is gone. A live agent that failed must be asked again: the runtime retries DEL.
    if (err instanceof AgentAbsent) warnings.push(`meshauth: ${err.message}; nothing to revoke`);
    else throw new CniError(ERROR.tryAgainLater, `the agent did not revoke the pod: ${(err as Error).message}`);
  }
}

async function check(config: PluginConfig, containerId: string, warnings: string[]): Promise<void> {
  try {
    await access(spoolFile(config.spoolDir, containerId));
  } catch {
    throw new CniError(ERROR.checkFailed, `meshauth holds no record of container ${containerId}`);
  }
  let answer: CniCheckResponse;
  try {
    answer = (await post(config.controlSocket, '/v1/cni/check', { containerId }, REQUEST_TIMEOUT_MS)) as CniCheckResponse;
  } catch (err) {
    warnings.push(`meshauth: the agent could not be asked (${(err as Error).message})`);
    return;
  }
  if (!answer.ok) throw new CniError(ERROR.checkFailed, `meshauth: ${answer.reason ?? 'the pod is not registered'}`);
}

function required(env: NodeJS.ProcessEnv, name: string): string {
  const value = env[name];
  if (!value) throw new CniError(ERROR.invalidEnvironment, `${name} is not set`);
  return value;
}

function spoolFile(dir: string, containerId: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(containerId)) throw new CniError(ERROR.invalidEnvironment, 'CNI_CONTAINERID is not a container ID');
  return join(dir, `${containerId}.json`);
}

/** Written whole or not at all (rename), in a directory only root can use. */
async function writeSpool(dir: string, containerId: string, record: CniAddRequest): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = spoolFile(dir, containerId);
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, JSON.stringify(record), { mode: 0o600 });
  await rename(temporary, file);
}

/** Nothing listens on the control socket: no agent on this node right now. */
class AgentAbsent extends Error {}

function post(socketPath: string, path: string, body: unknown, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = request(
      { socketPath, path, method: 'POST', timeout: timeoutMs, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) return reject(new Error(`the agent answered HTTP ${res.statusCode}: ${text.trim().slice(0, 200)}`));
          try {
            resolve(JSON.parse(text));
          } catch {
            reject(new Error('the agent answered with invalid JSON'));
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error(`the agent did not answer within ${timeoutMs} ms`)));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') reject(new AgentAbsent(`no agent on ${socketPath}`));
      else reject(err);
    });
    req.end(payload);
  });
}

async function main(): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const outcome = await runPlugin(process.env, Buffer.concat(chunks).toString('utf8'));
  for (const line of outcome.warnings) process.stderr.write(`${line}\n`);
  if (outcome.stdout !== '') process.stdout.write(`${outcome.stdout}\n`);
  process.exitCode = outcome.exitCode;
}

// Run as the plugin executable (the runtime calls it by its path); imported, it only exports.
if (process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) void main();
