// Test-side certificate builder for the X509-SVID corpus. Every certificate starts from a
// conforming profile (leafSpec / caSpec) and a test changes exactly the one field it is about,
// so each negative case differs from a valid chain by a single defect.
// @peculiar/x509 builds almost every shape; node-forge is used only for MD5 signatures, which
// WebCrypto refuses to produce.
import { KeyObject, X509Certificate, randomBytes, webcrypto } from 'node:crypto';
import nodeForge from 'node-forge';
import { AsnConvert } from '@peculiar/asn1-schema';
import { GeneralName, GeneralSubtree, GeneralSubtrees, NameConstraints } from '@peculiar/asn1-x509';
import { px509 } from '../../src/identity/x509.js';
import type { BundleLookup } from '../../src/identity/bundle-set.js';

px509.cryptoProvider.set(webcrypto as unknown as Crypto);

export type ForgeKey = 'ec-p256' | 'ec-p384' | 'ec-p521' | 'ed25519' | 'rsa-1024' | 'rsa-2048' | 'rsa-pss-2048';
export type ForgeHash = 'SHA-1' | 'SHA-256' | 'SHA-384' | 'SHA-512';

export interface Forged {
  der: Buffer;
  cert: X509Certificate;
  keys: CryptoKeyPair;
  key: ForgeKey;
  /** The subject exactly as encoded, so children chain by name byte for byte. */
  name: px509.Name;
}

export interface CertSpec {
  subject: string;
  /** Signs the certificate; self-signed when absent. */
  issuer?: Forged;
  key: ForgeKey;
  /** Overrides the hash of the issuer's default signature algorithm (e.g. SHA-1). */
  hash?: ForgeHash;
  notBefore: Date;
  notAfter: Date;
  /** null omits the extension. */
  basicConstraints: { ca: boolean; pathLength?: number; critical: boolean } | null;
  keyUsage: { flags: number; critical: boolean } | null;
  extKeyUsage: string[] | null;
  san: { names: px509.JsonGeneralName[]; critical: boolean } | null;
  extra: px509.Extension[];
}

export const KU = px509.KeyUsageFlags;
export const EKU = px509.ExtendedKeyUsage;
const HOUR = 3_600_000;

/** The fixed "now" every forged validity period is relative to. */
export const NOW = new Date('2030-06-01T12:00:00Z');

/** A conforming CA (root when issuer is absent, intermediate otherwise) for trust domain td. */
export function caSpec(td: string, issuer?: Forged, label = issuer ? 'intermediate' : 'root'): CertSpec {
  return {
    subject: `CN=${label} ${td}, O=cert-forge`,
    ...(issuer ? { issuer } : {}),
    key: 'ec-p256',
    notBefore: new Date(NOW.getTime() - 24 * HOUR),
    notAfter: new Date(NOW.getTime() + 24 * HOUR),
    basicConstraints: { ca: true, critical: true },
    keyUsage: { flags: KU.keyCertSign | KU.cRLSign, critical: true },
    extKeyUsage: null,
    san: { names: [{ type: 'url', value: `spiffe://${td}` }], critical: false },
    extra: [],
  };
}

/** A conforming leaf X509-SVID for id, as SPIRE issues them. */
export function leafSpec(id: string, issuer: Forged): CertSpec {
  return {
    subject: 'O=cert-forge, CN=workload',
    issuer,
    key: 'ec-p256',
    notBefore: new Date(NOW.getTime() - HOUR),
    notAfter: new Date(NOW.getTime() + HOUR),
    basicConstraints: { ca: false, critical: true },
    keyUsage: { flags: KU.digitalSignature | KU.keyEncipherment | KU.keyAgreement, critical: true },
    extKeyUsage: [EKU.serverAuth, EKU.clientAuth],
    san: { names: [{ type: 'url', value: id }], critical: false },
    extra: [],
  };
}

export async function forge(spec: CertSpec): Promise<Forged> {
  const keys = await generateKeys(spec.key);
  const signer = spec.issuer ?? { keys, key: spec.key };
  const extensions: px509.Extension[] = [];
  if (spec.basicConstraints) {
    const { ca, pathLength, critical } = spec.basicConstraints;
    extensions.push(new px509.BasicConstraintsExtension(ca, pathLength, critical));
  }
  if (spec.keyUsage) extensions.push(new px509.KeyUsagesExtension(spec.keyUsage.flags, spec.keyUsage.critical));
  if (spec.extKeyUsage) extensions.push(new px509.ExtendedKeyUsageExtension(spec.extKeyUsage, false));
  if (spec.san) extensions.push(new px509.SubjectAlternativeNameExtension(spec.san.names, spec.san.critical));
  extensions.push(await px509.SubjectKeyIdentifierExtension.create(keys.publicKey));
  if (spec.issuer) extensions.push(await px509.AuthorityKeyIdentifierExtension.create(spec.issuer.keys.publicKey));
  extensions.push(...spec.extra);
  const { algorithm, key } = await signingKey(signer, spec.hash);
  const created = await px509.X509CertificateGenerator.create({ ...certificateFields(spec, keys), signingAlgorithm: algorithm, signingKey: key, extensions });
  const der = Buffer.from(created.rawData);
  return { der, cert: new X509Certificate(der), keys, key: spec.key, name: created.subjectName };
}

/** A leaf signed by an RSA issuer through node-forge, with MD5 (which WebCrypto refuses) or SHA-256. */
export async function forgeRsaLeafWithNodeForge(id: string, issuer: Forged, digest: 'md5' | 'sha256'): Promise<Buffer> {
  const leafKeys = await generateKeys('rsa-2048');
  const cert = nodeForge.pki.createCertificate();
  cert.publicKey = nodeForge.pki.publicKeyFromPem(KeyObject.from(leafKeys.publicKey).export({ type: 'spki', format: 'pem' }).toString());
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = new Date(NOW.getTime() - HOUR);
  cert.validity.notAfter = new Date(NOW.getTime() + HOUR);
  cert.setSubject([{ shortName: 'O', value: 'cert-forge' }]);
  cert.setIssuer(nodeForge.pki.certificateFromPem(issuer.cert.toString()).subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
    { name: 'subjectAltName', altNames: [{ type: 6, value: id }] },
  ]);
  const issuerKey = nodeForge.pki.privateKeyFromPem(KeyObject.from(issuer.keys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString());
  cert.sign(issuerKey, digest === 'md5' ? nodeForge.md.md5.create() : nodeForge.md.sha256.create());
  return Buffer.from(nodeForge.asn1.toDer(nodeForge.pki.certificateToAsn1(cert)).getBytes(), 'binary');
}

/** A certificate carrying `algorithmOid` as its signature algorithm and a meaningless signature
 *  (for algorithms nothing here can sign with; the validator must refuse them before verifying). */
export async function forgeWithSignatureAlgorithm(spec: CertSpec, algorithmOid: string): Promise<Buffer> {
  const keys = await generateKeys(spec.key);
  const created = await px509.X509CertificateGenerator.create({
    ...certificateFields(spec, keys),
    signingAlgorithm: { name: algorithmOid },
    signature: randomBytes(64),
    extensions: [
      new px509.BasicConstraintsExtension(false, undefined, true),
      new px509.KeyUsagesExtension(KU.digitalSignature, true),
      ...(spec.san ? [new px509.SubjectAlternativeNameExtension(spec.san.names, spec.san.critical)] : []),
    ],
  });
  return Buffer.from(created.rawData);
}

export interface NameConstraintSpec {
  permittedUris?: string[];
  excludedUris?: string[];
  permittedDns?: string[];
  excludedDns?: string[];
  /** rfc822Name subtrees: a form the validator does not evaluate. */
  permittedEmails?: string[];
}

export function nameConstraints(spec: NameConstraintSpec, critical = true): px509.Extension {
  const subtrees = (names: GeneralName[]) =>
    names.length === 0 ? undefined : new GeneralSubtrees(names.map((base) => new GeneralSubtree({ base })));
  const permitted = [
    ...(spec.permittedUris ?? []).map((uri) => new GeneralName({ uniformResourceIdentifier: uri })),
    ...(spec.permittedDns ?? []).map((dns) => new GeneralName({ dNSName: dns })),
    ...(spec.permittedEmails ?? []).map((email) => new GeneralName({ rfc822Name: email })),
  ];
  const excluded = [
    ...(spec.excludedUris ?? []).map((uri) => new GeneralName({ uniformResourceIdentifier: uri })),
    ...(spec.excludedDns ?? []).map((dns) => new GeneralName({ dNSName: dns })),
  ];
  const value = AsnConvert.serialize(new NameConstraints({ permittedSubtrees: subtrees(permitted), excludedSubtrees: subtrees(excluded) }));
  return new px509.Extension('2.5.29.30', critical, value);
}

/** An extension nothing understands (a private OID), with an ASN.1 NULL value. */
export function unknownExtension(critical: boolean): px509.Extension {
  return new px509.Extension('1.3.6.1.4.1.55555.1.1', critical, new Uint8Array([0x05, 0x00]));
}

/** A BundleLookup over trust domain → forged CA certificates. */
export function bundlesOf(entries: Record<string, Forged[]>): BundleLookup {
  const map = new Map(Object.entries(entries).map(([td, certs]) => [td, certs.map((forged) => forged.cert)]));
  return { get: (td) => map.get(td) };
}

export function toPem(ders: Buffer[]): string {
  return ders.map((der) => new X509Certificate(der).toString()).join('');
}

async function generateKeys(key: ForgeKey): Promise<CryptoKeyPair> {
  const params: Record<ForgeKey, EcKeyGenParams | RsaHashedKeyGenParams | Algorithm> = {
    'ec-p256': { name: 'ECDSA', namedCurve: 'P-256' },
    'ec-p384': { name: 'ECDSA', namedCurve: 'P-384' },
    'ec-p521': { name: 'ECDSA', namedCurve: 'P-521' },
    ed25519: { name: 'Ed25519' },
    'rsa-1024': rsaParams('RSASSA-PKCS1-v1_5', 1024),
    'rsa-2048': rsaParams('RSASSA-PKCS1-v1_5', 2048),
    'rsa-pss-2048': rsaParams('RSA-PSS', 2048),
  };
  return (await webcrypto.subtle.generateKey(params[key], true, ['sign', 'verify'])) as CryptoKeyPair;
}

function rsaParams(name: string, modulusLength: number): RsaHashedKeyGenParams {
  return { name, modulusLength, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };
}

/** The signature algorithm for the signer's key, and a private key bound to its hash
 *  (WebCrypto RSA keys sign with the hash they were imported with, whatever the algorithm says). */
async function signingKey(signer: { keys: CryptoKeyPair; key: ForgeKey }, hashOverride?: ForgeHash): Promise<{ algorithm: Algorithm; key: CryptoKey }> {
  switch (signer.key) {
    case 'ec-p256':
    case 'ec-p384':
    case 'ec-p521': {
      const hash = hashOverride ?? ({ 'ec-p256': 'SHA-256', 'ec-p384': 'SHA-384', 'ec-p521': 'SHA-512' } as const)[signer.key];
      return { algorithm: { name: 'ECDSA', hash } as EcdsaParams, key: signer.keys.privateKey };
    }
    case 'ed25519':
      return { algorithm: { name: 'Ed25519' }, key: signer.keys.privateKey };
    case 'rsa-1024':
    case 'rsa-2048':
    case 'rsa-pss-2048': {
      const name = signer.key === 'rsa-pss-2048' ? 'RSA-PSS' : 'RSASSA-PKCS1-v1_5';
      const hash = hashOverride ?? 'SHA-256';
      const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', signer.keys.privateKey);
      const key = await webcrypto.subtle.importKey('pkcs8', pkcs8, { name, hash }, false, ['sign']);
      const algorithm = name === 'RSA-PSS' ? ({ name, hash, saltLength: 32 } as Algorithm) : ({ name, hash } as Algorithm);
      return { algorithm, key };
    }
  }
}

/** The fields every forged certificate takes from its spec: serial, names, validity, key. */
function certificateFields(spec: CertSpec, keys: CryptoKeyPair) {
  return {
    serialNumber: serialNumber(),
    subject: spec.subject,
    issuer: spec.issuer ? spec.issuer.name : spec.subject,
    notBefore: spec.notBefore,
    notAfter: spec.notAfter,
    publicKey: keys.publicKey,
  };
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
}
