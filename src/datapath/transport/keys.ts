// Key material for the transports: how callers hand keys in, and the node's WireGuard key pair.
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { link, mkdir, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { DatapathError } from '../errors.js';

/**
 * A key as the caller holds it: raw bytes, or a wrapper that hides them from logs and JSON and
 * hands them out through reveal() (the handshake's SecretBytes fits).
 */
export type KeyInput = Uint8Array | { reveal(): Uint8Array };

/** A private copy of a key of exactly `length` bytes; a clear error otherwise. */
export function copyKey(input: KeyInput, length: number, what: string): Buffer {
  const bytes = input instanceof Uint8Array ? input : typeof input?.reveal === 'function' ? input.reveal() : undefined;
  if (!(bytes instanceof Uint8Array)) throw new DatapathError(`${what}: expected key bytes`);
  if (bytes.length !== length) throw new DatapathError(`${what}: expected ${length} key bytes, got ${bytes.length}`);
  return Buffer.from(bytes);
}

/** WireGuard's key encoding (base64 of 32 bytes). */
export function isWireGuardKey(text: string): boolean {
  return /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/.test(text);
}

/** The node's WireGuard X25519 identity. The private half never leaves through toJSON/inspect. */
export class WireGuardKeyPair {
  readonly #privateKey: string;

  private constructor(
    privateKey: string,
    /** Base64, as `wg` prints it and as the node frame carries it. */
    readonly publicKey: string,
  ) {
    this.#privateKey = privateKey;
  }

  /** The private key in `wg`'s base64 form, for stdin or a 0600 file only. */
  revealPrivateKey(): string {
    return this.#privateKey;
  }

  static fromKeyObject(key: KeyObject): WireGuardKeyPair {
    if (key.asymmetricKeyType !== 'x25519') throw new DatapathError(`WireGuard needs an X25519 key, not ${key.asymmetricKeyType ?? key.type}`);
    const { d } = key.export({ format: 'jwk' });
    const { x } = createPublicKey(key).export({ format: 'jwk' });
    if (d === undefined || x === undefined) throw new DatapathError('X25519 key without its components');
    return new WireGuardKeyPair(Buffer.from(d, 'base64url').toString('base64'), Buffer.from(x, 'base64url').toString('base64'));
  }

  /**
   * Loads the key pair from `<stateDir>/wireguard-key.pem` (PKCS#8), generating it on first use.
   * The directory is created 0700 and the file 0600; a key file others can read is refused (it
   * may have leaked: delete it and let a new one be generated).
   */
  static async loadOrCreate(stateDir: string): Promise<WireGuardKeyPair> {
    const path = join(stateDir, 'wireguard-key.pem');
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    return (await readKeyFile(path)) ?? createKeyFile(path);
  }

  toJSON(): { publicKey: string } {
    return { publicKey: this.publicKey };
  }

  [inspect.custom](): string {
    return `WireGuardKeyPair(public ${this.publicKey}, private redacted)`;
  }
}

async function readKeyFile(path: string): Promise<WireGuardKeyPair | undefined> {
  let pem: string;
  try {
    const info = await stat(path);
    if ((info.mode & 0o077) !== 0) {
      throw new DatapathError(`WireGuard key file ${path} has mode ${(info.mode & 0o777).toString(8)}; it must be 0600 (not readable by group or others)`);
    }
    pem = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (err instanceof DatapathError) throw err;
    throw new DatapathError(`cannot read WireGuard key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch (err) {
    throw new DatapathError(`WireGuard key file ${path} holds no readable private key`, { cause: err });
  }
  return WireGuardKeyPair.fromKeyObject(key);
}

async function createKeyFile(path: string): Promise<WireGuardKeyPair> {
  const { privateKey } = generateKeyPairSync('x25519');
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' });
  // Written to a fresh 0600 file and linked into place: never a moment with a partial key or
  // wider permissions, and when another process created the key first, its key wins.
  const temporary = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  let raced = false;
  try {
    await writeFile(temporary, pem, { mode: 0o600, flag: 'wx' });
    await link(temporary, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new DatapathError(`cannot write WireGuard key file ${path}: ${(err as Error).message}`, { cause: err });
    }
    raced = true;
  } finally {
    await unlink(temporary).catch(() => undefined);
  }
  if (raced) {
    const existing = await readKeyFile(path);
    if (existing) return existing;
    throw new DatapathError(`WireGuard key file ${path} vanished while it was being created`);
  }
  return WireGuardKeyPair.fromKeyObject(privateKey);
}
