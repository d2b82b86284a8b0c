// `meshauth dev-ca init|issue`: set up one development CA and hand SVIDs from it to several nodes,
// which then load them through the file provider (or share the CA directory with the dev provider).
import { access, mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { Option, type Command } from 'commander';
import { UsageError } from './errors.js';
import { DevCa, type KeyAlgorithm } from '../identity/dev-ca.js';
import { SpiffeId } from '../identity/spiffe-id.js';
import { parseDuration } from '../util/duration.js';

const KEY_TYPES: readonly KeyAlgorithm[] = ['ec-p256', 'ec-p384', 'ed25519', 'rsa-2048'];
const CA_FILES = ['ca.pem', 'ca.key'];
// RFC 1123 host names, optionally with one leading wildcard label.
const DNS_NAME = /^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

interface InitOptions {
  trustDomain: string;
  dir: string;
  force?: boolean;
}

interface IssueCommandOptions {
  dir: string;
  id: string;
  ttl: string;
  out: string;
  keyType: KeyAlgorithm;
  dns: string[];
}

export function registerDevCaCommands(program: Command): void {
  const devCa = program
    .command('dev-ca')
    .description('Manage a development CA that several nodes can share (not for production)');

  devCa
    .command('init')
    .description('Create a CA for a trust domain: DIR/ca.pem and DIR/ca.key (0600)')
    .requiredOption('--trust-domain <name>', 'the trust domain the CA signs for')
    .requiredOption('--dir <dir>', 'where to write the CA (created 0700)')
    .option('--force', 'replace an existing CA (SVIDs it issued stop verifying)')
    .action(async (options: InitOptions) => init(options));

  devCa
    .command('issue')
    .description('Issue an X509-SVID: OUT/svid.pem (chain), OUT/svid.key (0600) and OUT/bundle.pem')
    .requiredOption('--dir <dir>', 'the CA directory written by "dev-ca init"')
    .requiredOption('--id <spiffe-id>', 'the SPIFFE ID to issue, in the CA\'s trust domain')
    .requiredOption('--out <dir>', 'where to write the files (created 0700)')
    .option('--ttl <duration>', 'lifetime, e.g. 1h or 90m (capped at the CA\'s own expiry)', '1h')
    .addOption(new Option('--key-type <type>', 'key algorithm of the SVID').choices(KEY_TYPES).default('ec-p256'))
    .option('--dns <name>', 'add a DNS SAN; repeatable', collect, [])
    .action(async (options: IssueCommandOptions) => issue(options));
}

async function init(options: InitOptions): Promise<void> {
  try {
    SpiffeId.checkTrustDomain(options.trustDomain);
  } catch (err) {
    throw new UsageError(`invalid --trust-domain "${options.trustDomain}": ${(err as Error).message}`);
  }
  const existing = await existingFiles(options.dir, CA_FILES);
  if (existing.length > 0 && !options.force) {
    // Not a usage error: the invocation is fine, the state is what refuses.
    throw new Error(
      `a dev CA already exists in ${options.dir} (${existing.join(', ')}); pass --force to replace it, which makes every SVID it issued unverifiable`,
    );
  }
  const ca = await DevCa.create({ trustDomain: options.trustDomain });
  await ca.save(options.dir);
  console.log(`created a dev CA for trust domain ${ca.trustDomain} in ${options.dir}`);
  console.log(`not after: ${new Date(ca.certificate.validTo).toISOString()}`);
}

async function issue(options: IssueCommandOptions): Promise<void> {
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(options.id);
  } catch (err) {
    throw new UsageError(`invalid --id "${options.id}": ${(err as Error).message}`);
  }
  if (id.isTrustDomainId) throw new UsageError(`invalid --id "${options.id}": an X509-SVID needs a path after the trust domain`);
  let ttlMs: number;
  try {
    ttlMs = parseDuration(options.ttl);
  } catch (err) {
    throw new UsageError(`invalid --ttl: ${(err as Error).message}`);
  }
  if (ttlMs < 1_000) throw new UsageError(`invalid --ttl "${options.ttl}": must be at least 1s`);
  const badDns = options.dns.find((name) => !DNS_NAME.test(name) || name.length > 253);
  if (badDns !== undefined) throw new UsageError(`invalid --dns "${badDns}": not a DNS host name`);

  const ca = await loadCa(options.dir);
  if (id.trustDomain !== ca.trustDomain) {
    throw new UsageError(`--id ${id.toString()} is not in trust domain ${ca.trustDomain}, the one the CA in ${options.dir} signs for`);
  }
  const svid = await ca.issue({ id, ttlMs, keyAlgorithm: options.keyType, dnsNames: options.dns });
  const chainPem = svid.chain.map((der) => new X509Certificate(der).toString()).join('');
  const keyPem = createPrivateKey({ key: svid.key, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string;

  await mkdir(options.out, { recursive: true, mode: 0o700 });
  // Key first: a file provider watching OUT then sees the new key before the certificate that
  // needs it, and each file appears complete (written aside, then renamed into place).
  await writeReplacing(join(options.out, 'svid.key'), keyPem, 0o600);
  await writeReplacing(join(options.out, 'svid.pem'), chainPem, 0o644);
  await writeReplacing(join(options.out, 'bundle.pem'), ca.certificate.toString(), 0o644);
  const leaf = new X509Certificate(svid.chain[0]!);
  console.log(id.toString());
  console.log(`not after: ${new Date(leaf.validTo).toISOString()}`);
}

async function loadCa(dir: string): Promise<DevCa> {
  if ((await existingFiles(dir, CA_FILES)).length === 0) {
    throw new Error(`no dev CA in ${dir}; create one with "meshauth dev-ca init --trust-domain <name> --dir ${dir}"`);
  }
  try {
    return await DevCa.load(dir);
  } catch (err) {
    throw new Error(`cannot load the dev CA in ${dir}: ${(err as Error).message}`);
  }
}

async function existingFiles(dir: string, names: readonly string[]): Promise<string[]> {
  const present = await Promise.all(
    names.map((name) =>
      access(join(dir, name)).then(
        () => name,
        () => undefined,
      ),
    ),
  );
  return present.filter((name) => name !== undefined);
}

/** Writes aside and renames over path, so readers never see a partial file. The file is created
 *  fresh ('wx'), so its mode is the one given, never that of a leftover from an interrupted run. */
async function writeReplacing(path: string, content: string, mode: number): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}`;
  await rm(temporary, { force: true });
  await writeFile(temporary, content, { mode, flag: 'wx' });
  await rename(temporary, path);
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
