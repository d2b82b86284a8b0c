// `meshauth svid verify` runs the same X509-SVID validation the handshake runs, on files, so an
// operator can see exactly why a peer's certificate would be refused. `meshauth svid sni` shows
// the SNI a handshake for an identity carries.
import { readFile } from 'node:fs/promises';
import { X509Certificate } from 'node:crypto';
import type { Command } from 'commander';
import { UsageError } from './errors.js';
import { SpiffeId, SpiffeIdError } from '../identity/spiffe-id.js';
import { pemCertificatesToDer, splitConcatenatedDer, type BundleLookup } from '../identity/bundle-set.js';
import { SvidError } from '../identity/svid-errors.js';
import { validateX509Svid } from '../identity/svid-validator.js';
import { sniForIdentity } from '../handshake/sni.js';

interface VerifyOptions {
  chain: string;
  bundle: string[];
  id?: string;
  at?: string;
}

export function registerSvidCommands(program: Command): void {
  const svid = program.command('svid').description('Inspect X509-SVIDs');

  svid
    .command('verify')
    .description('Validate an X509-SVID chain as a meshauth handshake would (exit 0 valid, 1 invalid, 2 bad input)')
    .requiredOption('--chain <file>', 'the SVID chain, leaf first (PEM, or concatenated DER)')
    .requiredOption(
      '--bundle <[trust-domain=]file>',
      'CA certificates (PEM or DER) of one trust domain; repeatable. Without "trust-domain=" the bundle is ' +
        'used for the trust domain the SVID claims (write "./a=b.pem" for a file name containing "=")',
      collect,
    )
    .option('--id <spiffe-id>', 'require exactly this SPIFFE ID')
    .option('--at <iso-time>', 'validate at this time instead of now (e.g. 2030-01-01T00:00:00Z)')
    .action(async (options: VerifyOptions) => {
      const expectedId = options.id === undefined ? undefined : parseSpiffeId(options.id, '--id');
      const now = options.at === undefined ? new Date() : parseTime(options.at);
      const chain = await readCertificates(options.chain);
      const bundles = await readBundles(options.bundle);
      try {
        const result = validateX509Svid(chain, bundles, { now, ...(expectedId ? { expectedId } : {}) });
        console.log(result.id.toString());
      } catch (err) {
        if (!(err instanceof SvidError)) throw err;
        console.error(`meshauth: invalid X509-SVID: ${err.reason} (${err.failureClass}): ${err.message}`);
        process.exitCode = 1;
      }
    });

  svid
    .command('sni')
    .description('Print the TLS SNI that names a SPIFFE ID in a meshauth-pair handshake')
    .argument('<spiffe-id>', 'the target identity')
    .action((id: string) => {
      console.log(sniForIdentity(parseSpiffeId(id, 'SPIFFE ID')));
    });
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

function parseSpiffeId(input: string, what: string): SpiffeId {
  try {
    return SpiffeId.parse(input);
  } catch (err) {
    const rule = err instanceof SpiffeIdError ? ` [${err.rule}]` : '';
    throw new UsageError(`invalid ${what} "${input}": ${(err as Error).message}${rule}`);
  }
}

function parseTime(input: string): Date {
  const time = new Date(input);
  if (Number.isNaN(time.getTime())) throw new UsageError(`invalid --at time "${input}" (expected ISO 8601, e.g. 2030-01-01T00:00:00Z)`);
  return time;
}

/** Reads PEM or concatenated DER certificates; anything unreadable is a usage error (exit 2). */
async function readCertificates(file: string): Promise<X509Certificate[]> {
  let data: Buffer;
  try {
    data = await readFile(file);
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    const text = data.toString('latin1');
    const ders = text.includes('-----BEGIN') ? pemCertificatesToDer(text) : splitConcatenatedDer(data);
    if (ders.length === 0) throw new Error('no certificate found');
    return ders.map((der) => new X509Certificate(der));
  } catch (err) {
    throw new UsageError(`cannot parse certificates in ${file}: ${(err as Error).message}`);
  }
}

/** `--bundle td=file` binds a bundle to a trust domain; a bare `--bundle file` serves whatever
 *  trust domain the SVID claims (together with any bundle named for that domain). */
async function readBundles(specs: readonly string[]): Promise<BundleLookup> {
  const named = new Map<string, X509Certificate[]>();
  const unnamed: X509Certificate[] = [];
  for (const spec of specs) {
    const eq = spec.indexOf('=');
    const prefix = eq === -1 ? undefined : spec.slice(0, eq);
    if (prefix === undefined || prefix.includes('/')) {
      unnamed.push(...(await readCertificates(spec)));
      continue;
    }
    try {
      SpiffeId.checkTrustDomain(prefix);
    } catch (err) {
      throw new UsageError(`invalid trust domain in --bundle ${spec}: ${(err as Error).message}`);
    }
    const certs = named.get(prefix) ?? [];
    certs.push(...(await readCertificates(spec.slice(eq + 1))));
    named.set(prefix, certs);
  }
  return {
    get: (trustDomain) => {
      const certs = [...(named.get(trustDomain) ?? []), ...unnamed];
      return certs.length > 0 ? certs : undefined;
    },
  };
}
