import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KeyObject, X509Certificate, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import { px509 } from './x509.js';
import { SpiffeId } from './spiffe-id.js';
import type { RawSvid } from './types.js';

px509.cryptoProvider.set(webcrypto as unknown as Crypto);

export type KeyAlgorithm = 'ec-p256' | 'ec-p384' | 'ed25519' | 'rsa-2048';

const KEY_ALGORITHMS: Record<KeyAlgorithm, { generate: EcKeyGenParams | RsaHashedKeyGenParams | Algorithm; sign: Algorithm | EcdsaParams }> = {
  'ec-p256': { generate: { name: 'ECDSA', namedCurve: 'P-256' }, sign: { name: 'ECDSA', hash: 'SHA-256' } },
  'ec-p384': { generate: { name: 'ECDSA', namedCurve: 'P-384' }, sign: { name: 'ECDSA', hash: 'SHA-384' } },
  ed25519: { generate: { name: 'Ed25519' }, sign: { name: 'Ed25519' } },
  'rsa-2048': {
    generate: { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    sign: { name: 'RSASSA-PKCS1-v1_5' },
  },
};

const CA_CERT_FILE = 'ca.pem';
const CA_KEY_FILE = 'ca.key';
// Backdating absorbs small clock differences between the issuing node and its peers.
const BACKDATE_MS = 60_000;

export interface IssueOptions {
  id: SpiffeId | string;
  ttlMs: number;
  keyAlgorithm?: KeyAlgorithm;
  /** Extra DNS SANs (allowed by X509-SVID alongside the one URI SAN). */
  dnsNames?: string[];
  now?: Date;
}

/**
 * A self-contained SPIFFE CA: an ECDSA P-256 root for one trust domain that issues
 * X509-SVIDs conforming to the SPIFFE X509-SVID rules. The embedded development default,
 * and the CA behind `meshauth dev-ca`. Not for production: its key is a file on each node.
 */
export class DevCa {
  private constructor(
    readonly trustDomain: string,
    readonly certificate: X509Certificate,
    private readonly signingKey: CryptoKey,
  ) {}

  static async create(options: { trustDomain: string; validityMs?: number; now?: Date }): Promise<DevCa> {
    SpiffeId.checkTrustDomain(options.trustDomain);
    const algorithm = KEY_ALGORITHMS['ec-p256'];
    const keys = (await webcrypto.subtle.generateKey(algorithm.generate, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = options.now ?? new Date();
    const validityMs = options.validityMs ?? 365 * 86_400_000;
    const cert = await px509.X509CertificateGenerator.create({
      serialNumber: serialNumber(),
      subject: `O=meshauth dev CA, CN=${options.trustDomain}`,
      issuer: `O=meshauth dev CA, CN=${options.trustDomain}`,
      notBefore: new Date(now.getTime() - BACKDATE_MS),
      notAfter: new Date(now.getTime() + validityMs),
      signingAlgorithm: algorithm.sign,
      publicKey: keys.publicKey,
      signingKey: keys.privateKey,
      extensions: [
        new px509.BasicConstraintsExtension(true, undefined, true),
        new px509.KeyUsagesExtension(px509.KeyUsageFlags.keyCertSign | px509.KeyUsageFlags.cRLSign, true),
        new px509.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${options.trustDomain}` }]),
        await px509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return new DevCa(options.trustDomain, new X509Certificate(Buffer.from(cert.rawData)), keys.privateKey);
  }

  /** Loads a CA saved by save(); the trust domain is read from the CA's SPIFFE ID. */
  static async load(dir: string): Promise<DevCa> {
    const certificate = new X509Certificate(await readFile(join(dir, CA_CERT_FILE)));
    const keyPem = await readFile(join(dir, CA_KEY_FILE), 'utf8');
    const privateKey = createPrivateKey(keyPem);
    // A key from another CA (say, two nodes initialising a shared directory at once) would sign
    // leaves that chain to nothing; refuse it here with a clear message instead.
    if (!certificate.checkPrivateKey(privateKey)) {
      throw new Error(`${join(dir, CA_KEY_FILE)} does not belong to the certificate in ${join(dir, CA_CERT_FILE)}`);
    }
    const pkcs8 = privateKey.export({ type: 'pkcs8', format: 'der' });
    const signingKey = await webcrypto.subtle.importKey('pkcs8', pkcs8, KEY_ALGORITHMS['ec-p256'].generate, false, ['sign']);
    const uri = /URI:(spiffe:\/\/[^,\s]+)/.exec(certificate.subjectAltName ?? '')?.[1];
    if (!uri) throw new Error(`${join(dir, CA_CERT_FILE)} has no SPIFFE trust-domain URI SAN`);
    return new DevCa(SpiffeId.parse(uri).trustDomain, certificate, signingKey);
  }

  /** Writes ca.pem (0644) and ca.key (0600) into dir (created 0700). */
  async save(dir: string, exportableKey: CryptoKey | KeyObject = this.signingKey): Promise<void> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const keyObject = exportableKey instanceof KeyObject ? exportableKey : KeyObject.from(exportableKey);
    const keyPath = join(dir, CA_KEY_FILE);
    await writeFile(keyPath, keyObject.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    await chmod(keyPath, 0o600);
    await writeFile(join(dir, CA_CERT_FILE), this.certificate.toString(), { mode: 0o644 });
  }

  /** The trust bundle of this CA's trust domain (DER). */
  bundle(): Buffer[] {
    return [this.certificate.raw];
  }

  /** Issues a leaf X509-SVID for a workload or node identity in this CA's trust domain. */
  async issue(options: IssueOptions): Promise<RawSvid> {
    const id = typeof options.id === 'string' ? SpiffeId.parse(options.id) : options.id;
    if (id.trustDomain !== this.trustDomain) {
      throw new Error(`cannot issue ${id.toString()}: this CA signs for trust domain ${this.trustDomain}`);
    }
    if (id.isTrustDomainId) throw new Error(`cannot issue ${id.toString()}: an X509-SVID needs a path`);
    const algorithm = KEY_ALGORITHMS[options.keyAlgorithm ?? 'ec-p256'];
    const keys = (await webcrypto.subtle.generateKey(algorithm.generate, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = options.now ?? new Date();
    const notAfter = new Date(Math.min(now.getTime() + options.ttlMs, new Date(this.certificate.validTo).getTime()));
    const sans: px509.JsonGeneralName[] = [{ type: 'url', value: id.toString() }];
    for (const dns of options.dnsNames ?? []) sans.push({ type: 'dns', value: dns });
    const cert = await px509.X509CertificateGenerator.create({
      serialNumber: serialNumber(),
      // X509-SVID: the subject may be empty, but then the SAN must be critical; a short
      // subject keeps the SAN non-critical and the certificate readable in tools.
      subject: 'O=meshauth',
      issuer: this.issuerName(),
      notBefore: new Date(now.getTime() - BACKDATE_MS),
      notAfter,
      signingAlgorithm: KEY_ALGORITHMS['ec-p256'].sign,
      publicKey: keys.publicKey,
      signingKey: this.signingKey,
      extensions: [
        new px509.BasicConstraintsExtension(false, undefined, true),
        new px509.KeyUsagesExtension(px509.KeyUsageFlags.digitalSignature, true),
        new px509.ExtendedKeyUsageExtension([px509.ExtendedKeyUsage.serverAuth, px509.ExtendedKeyUsage.clientAuth], false),
        new px509.SubjectAlternativeNameExtension(sans, false),
        await px509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        await px509.AuthorityKeyIdentifierExtension.create(await this.publicCryptoKey()),
      ],
    });
    const key = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
    return { chain: [Buffer.from(cert.rawData)], key, claimedId: id.toString() };
  }

  private parsedCertificate?: px509.X509Certificate;
  /** The CA's subject exactly as encoded, so that issued certificates chain by name byte for byte. */
  private issuerName(): px509.Name {
    this.parsedCertificate ??= new px509.X509Certificate(this.certificate.raw);
    return this.parsedCertificate.subjectName;
  }

  private publicKeyPromise?: Promise<CryptoKey>;
  private publicCryptoKey(): Promise<CryptoKey> {
    this.publicKeyPromise ??= webcrypto.subtle.importKey(
      'spki',
      this.certificate.publicKey.export({ type: 'spki', format: 'der' }),
      KEY_ALGORITHMS['ec-p256'].generate,
      true,
      ['verify'],
    );
    return this.publicKeyPromise;
  }
}

function serialNumber(): string {
  // 16 random bytes with the top bit cleared: a positive serial of full entropy (RFC 5280 §4.1.2.2).
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
}
