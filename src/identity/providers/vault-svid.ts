// Turns a Vault PKI issue answer into what the identity store takes: a leaf-first DER chain
// with the intermediates only, the key as PKCS#8 DER, and the trust anchors of the bundle.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { pemCertificatesToDer } from '../bundle-set.js';
import type { SpiffeId } from '../spiffe-id.js';
import type { RawSvid } from '../types.js';
import { VaultError, type IssueData } from './vault-client.js';

export interface IssuedSvid {
  svid: RawSvid;
  serial: string;
  notAfter: Date;
  /** The CA certificates to trust for this SVID's trust domain (DER). */
  roots: Buffer[];
}

/** The CA certificates of an issue answer, issuing CA first: `ca_chain` when Vault sent one
 *  (Vault ≥ 1.11 includes the parents), else `issuing_ca`. Empty when the answer has neither. */
export function caCertificatesOf(data: IssueData): Buffer[] {
  const pems = data.ca_chain && data.ca_chain.length > 0 ? data.ca_chain : data.issuing_ca ? [data.issuing_ca] : [];
  return pems.filter((pem) => pem.trim() !== '').flatMap((pem) => pemToDers(pem, 'a CA certificate'));
}

/** pemCertificatesToDer, failing as a malformed Vault answer. */
export function pemToDers(pem: string, what: string): Buffer[] {
  try {
    return pemCertificatesToDer(pem);
  } catch (err) {
    throw new VaultError('malformed', `vault answer: ${what} is not PEM: ${(err as Error).message}`);
  }
}

/**
 * Builds the SVID for `id` from an issue answer and the CA certificates that belong to it
 * (issuing CA first). Self-signed CA certificates are trust anchors and stay out of the chain;
 * when there is none (an intermediate mount whose root Vault does not know), the top of the
 * chain is the anchor. Throws VaultError('malformed') for anything that does not fit together.
 */
export function svidFromIssue(id: SpiffeId, data: IssueData, caDers: Buffer[]): IssuedSvid {
  const what = `vault answer for ${id.toString()}`;
  let leaf: X509Certificate;
  let leafDer: Buffer;
  try {
    const ders = pemCertificatesToDer(data.certificate);
    if (ders.length !== 1) throw new Error(`expected one certificate, found ${ders.length}`);
    leafDer = ders[0] as Buffer;
    leaf = new X509Certificate(leafDer);
  } catch (err) {
    throw new VaultError('malformed', `${what}: certificate is unusable: ${(err as Error).message}`);
  }
  let key: Buffer;
  try {
    const privateKey = createPrivateKey({ key: data.private_key, format: 'pem' });
    if (!leaf.checkPrivateKey(privateKey)) throw new Error('it does not match the certificate');
    key = privateKey.export({ type: 'pkcs8', format: 'der' });
  } catch (err) {
    // The parser's message never quotes the key; still, say only what went wrong.
    throw new VaultError('malformed', `${what}: private key is unusable: ${(err as Error).message}`);
  }

  const seen = new Set<string>([leaf.fingerprint256]);
  const cas: Array<{ der: Buffer; cert: X509Certificate }> = [];
  for (const der of caDers) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(der);
    } catch (err) {
      throw new VaultError('malformed', `${what}: a CA certificate does not parse: ${(err as Error).message}`);
    }
    if (seen.has(cert.fingerprint256)) continue;
    seen.add(cert.fingerprint256);
    cas.push({ der, cert });
  }
  if (cas.length === 0) throw new VaultError('malformed', `${what}: no CA certificate to build a trust bundle from`);

  const selfSigned = (cert: X509Certificate): boolean => cert.checkIssued(cert) && cert.verify(cert.publicKey);
  let roots = cas.filter((ca) => selfSigned(ca.cert));
  if (roots.length === 0) roots = cas.slice(-1);
  const intermediates = cas.filter((ca) => !roots.includes(ca));

  return {
    svid: { chain: [leafDer, ...intermediates.map((ca) => ca.der)], key, claimedId: id.toString() },
    serial: data.serial_number,
    notAfter: new Date(leaf.validTo),
    roots: roots.map((ca) => ca.der),
  };
}
