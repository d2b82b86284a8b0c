import test from 'ava';
import type { X509Certificate } from 'node:crypto';
import { DevCa, type KeyAlgorithm } from '../src/identity/dev-ca.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { SVID_REASONS, SvidError, failureClassOf, type SvidFailureClass, type SvidReason } from '../src/identity/svid-errors.js';
import { validateX509Svid, type SvidValidationOptions } from '../src/identity/svid-validator.js';
import type { BundleLookup } from '../src/identity/bundle-set.js';
import { px509 } from '../src/identity/x509.js';
import {
  EKU,
  KU,
  NOW,
  bundlesOf,
  caSpec,
  forge,
  forgeRsaLeafWithNodeForge,
  forgeWithSignatureAlgorithm,
  leafSpec,
  nameConstraints,
  unknownExtension,
  type CertSpec,
  type ForgeKey,
  type Forged,
} from './helpers/cert-forge.js';

const TD = 'example.org';
const OTHER_TD = 'other.org';
const ID = `spiffe://${TD}/ns/prod/sa/web`;
const SECOND = 1000;
const HOUR = 3_600_000;
const at = (offsetMs: number) => new Date(NOW.getTime() + offsetMs);

/** The shared, conforming PKI every case starts from: root → intermediate → leaf for TD, and a
 *  second trust domain for federation. Each negative case changes exactly one thing. */
interface Pki {
  root: Forged;
  intermediate: Forged;
  otherRoot: Forged;
  rsaRoot: Forged;
  bundles: BundleLookup;
  federated: BundleLookup;
}
let pki: Pki;

test.before(async () => {
  const root = await forge(caSpec(TD));
  const otherRoot = await forge(caSpec(OTHER_TD));
  pki = {
    root,
    intermediate: await forge(caSpec(TD, root)),
    otherRoot,
    rsaRoot: await forge({ ...caSpec(TD, undefined, 'rsa root'), key: 'rsa-2048' }),
    bundles: bundlesOf({ [TD]: [root] }),
    federated: bundlesOf({ [TD]: [root], [OTHER_TD]: [otherRoot] }),
  };
});

/** A leaf under the shared intermediate with some fields of the conforming profile replaced. */
const leaf = (changes: Partial<CertSpec> = {}) => forge({ ...leafSpec(ID, pki.intermediate), ...changes });
const intermediate = (changes: Partial<CertSpec> = {}) => forge({ ...caSpec(TD, pki.root), ...changes });
const root = (changes: Partial<CertSpec> = {}) => forge({ ...caSpec(TD), ...changes });
/** A conforming leaf and the intermediate (with some fields replaced) that signed it. */
async function chainThrough(changes: Partial<CertSpec>): Promise<{ chain: Buffer[] }> {
  const signer = await intermediate(changes);
  return { chain: [(await forge(leafSpec(ID, signer))).der, signer.der] };
}

function validate(chain: readonly (Buffer | X509Certificate)[], bundles: BundleLookup = pki.bundles, options: SvidValidationOptions = {}) {
  return validateX509Svid(chain, bundles, { now: NOW, ...options });
}

function tamperSignature(der: Buffer): Buffer {
  const copy = Buffer.from(der);
  copy[copy.length - 1]! ^= 0x01; // the last byte belongs to the signature value
  return copy;
}

// ---- negative corpus -------------------------------------------------------------------------

interface NegativeCase {
  title: string;
  reason: SvidReason;
  build: () => Promise<{ chain: (Buffer | X509Certificate)[]; bundles?: BundleLookup; options?: SvidValidationOptions }>;
}

const negative: NegativeCase[] = [
  // chain shape
  { title: 'an empty chain', reason: 'empty_chain', build: () => Promise.resolve({ chain: [] }) },
  {
    title: 'six certificates with the default depth limit of five',
    reason: 'chain_too_long',
    build: async () => ({ chain: [(await leaf()).der, ...Array<Buffer>(5).fill(pki.intermediate.der)] }),
  },
  {
    title: 'a leaf and two intermediates with maxChainDepth 2',
    reason: 'chain_too_long',
    build: async () => {
      const upper = await intermediate();
      const lower = await forge(caSpec(TD, upper, 'lower'));
      return { chain: [(await forge(leafSpec(ID, lower))).der, lower.der, upper.der], options: { maxChainDepth: 2 } };
    },
  },
  { title: 'random bytes as the leaf', reason: 'malformed_certificate', build: () => Promise.resolve({ chain: [Buffer.from('not a certificate at all')] }) },
  {
    title: 'a truncated leaf',
    reason: 'malformed_certificate',
    build: async () => ({ chain: [(await leaf()).der.subarray(0, 200), pki.intermediate.der] }),
  },
  {
    title: 'trailing bytes after the leaf DER',
    reason: 'malformed_certificate',
    build: async () => ({ chain: [Buffer.concat([(await leaf()).der, Buffer.from([0, 0])]), pki.intermediate.der] }),
  },
  {
    title: 'a PEM text where DER is expected',
    reason: 'malformed_certificate',
    build: async () => ({ chain: [Buffer.from((await leaf()).cert.toString()), pki.intermediate.der] }),
  },
  {
    title: 'a malformed intermediate',
    reason: 'malformed_certificate',
    build: async () => ({ chain: [(await leaf()).der, Buffer.from([0x30, 0x03, 0x02, 0x01, 0x00])] }),
  },
  // leaf SAN and SPIFFE ID
  { title: 'a leaf without any SAN', reason: 'no_uri_san', build: async () => ({ chain: [(await leaf({ san: null })).der, pki.intermediate.der] }) },
  {
    title: 'a leaf with only a DNS SAN',
    reason: 'no_uri_san',
    build: async () => ({ chain: [(await leaf({ san: { names: [{ type: 'dns', value: 'web.example.org' }], critical: false } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf with two URI SANs',
    reason: 'multiple_uri_sans',
    build: async () => {
      const names = [
        { type: 'url' as const, value: ID },
        { type: 'url' as const, value: `spiffe://${TD}/ns/prod/sa/admin` },
      ];
      return { chain: [(await leaf({ san: { names, critical: false } })).der, pki.intermediate.der] };
    },
  },
  {
    title: 'a leaf whose URI SAN is an https URL',
    reason: 'invalid_spiffe_id',
    build: async () => ({ chain: [(await leaf({ san: { names: [{ type: 'url', value: 'https://example.org/web' }], critical: false } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf whose SPIFFE ID has an uppercase trust domain',
    reason: 'invalid_spiffe_id',
    build: async () => ({ chain: [(await leaf({ san: { names: [{ type: 'url', value: 'spiffe://Example.org/web' }], critical: false } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf whose SPIFFE ID has a dot segment',
    reason: 'invalid_spiffe_id',
    build: async () => ({ chain: [(await leaf({ san: { names: [{ type: 'url', value: `spiffe://${TD}/ns/../sa` }], critical: false } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf carrying the trust-domain ID (no path)',
    reason: 'leaf_no_path',
    build: async () => ({ chain: [(await leaf({ san: { names: [{ type: 'url', value: `spiffe://${TD}` }], critical: false } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf with an empty subject and a non-critical SAN',
    reason: 'empty_subject_san_not_critical',
    build: async () => ({ chain: [(await leaf({ subject: '' })).der, pki.intermediate.der] }),
  },
  // leaf constraints and key usage
  {
    title: 'a leaf with cA=true',
    reason: 'leaf_is_ca',
    build: async () => ({ chain: [(await leaf({ basicConstraints: { ca: true, critical: true } })).der, pki.intermediate.der] }),
  },
  { title: 'a leaf without key usage', reason: 'leaf_key_usage_missing', build: async () => ({ chain: [(await leaf({ keyUsage: null })).der, pki.intermediate.der] }) },
  {
    title: 'a leaf with non-critical key usage',
    reason: 'leaf_key_usage_not_critical',
    build: async () => ({ chain: [(await leaf({ keyUsage: { flags: KU.digitalSignature, critical: false } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf whose key usage lacks digitalSignature',
    reason: 'leaf_no_digital_signature',
    build: async () => ({ chain: [(await leaf({ keyUsage: { flags: KU.keyEncipherment | KU.keyAgreement, critical: true } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf with keyCertSign',
    reason: 'leaf_key_cert_sign',
    build: async () => ({ chain: [(await leaf({ keyUsage: { flags: KU.digitalSignature | KU.keyCertSign, critical: true } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf with cRLSign',
    reason: 'leaf_crl_sign',
    build: async () => ({ chain: [(await leaf({ keyUsage: { flags: KU.digitalSignature | KU.cRLSign, critical: true } })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf whose EKU has serverAuth only',
    reason: 'eku_missing_server_or_client_auth',
    build: async () => ({ chain: [(await leaf({ extKeyUsage: [EKU.serverAuth] })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf whose EKU has clientAuth and codeSigning',
    reason: 'eku_missing_server_or_client_auth',
    build: async () => ({ chain: [(await leaf({ extKeyUsage: [EKU.clientAuth, EKU.codeSigning] })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf with an unknown critical extension',
    reason: 'unknown_critical_extension',
    build: async () => ({ chain: [(await leaf({ extra: [unknownExtension(true)] })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf with two SAN extensions',
    reason: 'duplicate_extension',
    build: async () => {
      const second = { names: [{ type: 'url' as const, value: `spiffe://${TD}/ns/prod/sa/admin` }], critical: false };
      return { chain: [(await leaf({ extra: [new px509.SubjectAlternativeNameExtension(second.names, second.critical)] })).der, pki.intermediate.der] };
    },
  },
  // algorithms and keys
  {
    title: 'a leaf signed with SHA-1 RSA',
    reason: 'weak_signature_algorithm',
    build: async () => ({ chain: [(await forge({ ...leafSpec(ID, pki.rsaRoot), hash: 'SHA-1' })).der], bundles: bundlesOf({ [TD]: [pki.rsaRoot] }) }),
  },
  {
    title: 'a leaf signed with MD5 RSA (node-forge)',
    reason: 'weak_signature_algorithm',
    build: async () => ({ chain: [await forgeRsaLeafWithNodeForge(ID, pki.rsaRoot, 'md5')], bundles: bundlesOf({ [TD]: [pki.rsaRoot] }) }),
  },
  {
    title: 'an intermediate signed with SHA-1 RSA',
    reason: 'weak_signature_algorithm',
    build: async () => {
      const weak = await forge({ ...caSpec(TD, pki.rsaRoot), hash: 'SHA-1' });
      return { chain: [(await forge(leafSpec(ID, weak))).der, weak.der], bundles: bundlesOf({ [TD]: [pki.rsaRoot] }) };
    },
  },
  {
    title: 'a leaf signed with ecdsa-with-SHA224',
    reason: 'unsupported_signature_algorithm',
    build: async () => ({ chain: [await forgeWithSignatureAlgorithm(leafSpec(ID, pki.intermediate), '1.2.840.10045.4.3.1'), pki.intermediate.der] }),
  },
  { title: 'a leaf with an RSA-1024 key', reason: 'rsa_key_too_small', build: async () => ({ chain: [(await leaf({ key: 'rsa-1024' })).der, pki.intermediate.der] }) },
  {
    title: 'an intermediate with an RSA-1024 key',
    reason: 'rsa_key_too_small',
    build: () => chainThrough({ key: 'rsa-1024' }),
  },
  { title: 'a leaf with a P-521 key', reason: 'unsupported_key', build: async () => ({ chain: [(await leaf({ key: 'ec-p521' })).der, pki.intermediate.der] }) },
  {
    title: 'a trust anchor with an RSA-1024 key',
    reason: 'rsa_key_too_small',
    build: async () => {
      const weakRoot = await root({ key: 'rsa-1024' });
      return { chain: [(await forge(leafSpec(ID, weakRoot))).der], bundles: bundlesOf({ [TD]: [weakRoot] }) };
    },
  },
  // signing certificates
  {
    title: 'an intermediate with cA=false',
    reason: 'signing_cert_not_ca',
    build: () => chainThrough({ basicConstraints: { ca: false, critical: true } }),
  },
  {
    title: 'an intermediate without basic constraints',
    reason: 'signing_cert_not_ca',
    build: () => chainThrough({ basicConstraints: null }),
  },
  {
    title: 'an intermediate whose key usage lacks keyCertSign',
    reason: 'signing_cert_no_key_cert_sign',
    build: () => chainThrough({ keyUsage: { flags: KU.cRLSign | KU.digitalSignature, critical: true } }),
  },
  {
    title: 'an intermediate without key usage',
    reason: 'signing_cert_no_key_cert_sign',
    build: () => chainThrough({ keyUsage: null }),
  },
  {
    title: 'an intermediate whose SPIFFE ID has a path',
    reason: 'signing_cert_id_has_path',
    build: () => chainThrough({ san: { names: [{ type: 'url', value: `spiffe://${TD}/ca` }], critical: false } }),
  },
  {
    title: 'an intermediate with an invalid SPIFFE ID',
    reason: 'invalid_spiffe_id',
    build: () => chainThrough({ san: { names: [{ type: 'url', value: 'spiffe://Example.org' }], critical: false } }),
  },
  {
    title: 'an intermediate with an unknown critical extension',
    reason: 'unknown_critical_extension',
    build: () => chainThrough({ extra: [unknownExtension(true)] }),
  },
  {
    title: 'a trust anchor that is not a CA',
    reason: 'signing_cert_not_ca',
    build: async () => {
      const notCa = await root({ basicConstraints: null });
      return { chain: [(await forge(leafSpec(ID, notCa))).der], bundles: bundlesOf({ [TD]: [notCa] }) };
    },
  },
  {
    title: 'a trust anchor whose key usage lacks keyCertSign',
    reason: 'signing_cert_no_key_cert_sign',
    build: async () => {
      const noSign = await root({ keyUsage: { flags: KU.cRLSign, critical: true } });
      return { chain: [(await forge(leafSpec(ID, noSign))).der], bundles: bundlesOf({ [TD]: [noSign] }) };
    },
  },
  // trust
  {
    title: 'a trust domain with no bundle',
    reason: 'no_bundle_for_trust_domain',
    build: async () => ({ chain: [(await forge(leafSpec('spiffe://unknown.org/web', pki.intermediate))).der, pki.intermediate.der] }),
  },
  {
    title: 'a trust domain whose bundle is empty',
    reason: 'no_bundle_for_trust_domain',
    build: async () => ({ chain: [(await leaf()).der, pki.intermediate.der], bundles: bundlesOf({ [TD]: [] }) }),
  },
  {
    title: 'a chain from a rogue root with the same name as the real one',
    reason: 'no_path_to_trust_anchor',
    build: async () => {
      const rogueRoot = await root();
      const rogue = await forge(caSpec(TD, rogueRoot));
      return { chain: [(await forge(leafSpec(ID, rogue))).der, rogue.der] };
    },
  },
  {
    title: 'a leaf whose intermediate is missing',
    reason: 'no_path_to_trust_anchor',
    build: async () => ({ chain: [(await leaf()).der] }),
  },
  {
    title: 'a leaf of other.org signed by the example.org CA (both bundles loaded)',
    reason: 'no_path_to_trust_anchor',
    build: async () => ({ chain: [(await forge(leafSpec(`spiffe://${OTHER_TD}/web`, pki.intermediate))).der, pki.intermediate.der], bundles: pki.federated }),
  },
  {
    title: 'an example.org leaf checked against only the other.org bundle under its name',
    reason: 'no_path_to_trust_anchor',
    build: async () => ({ chain: [(await leaf()).der, pki.intermediate.der], bundles: bundlesOf({ [TD]: [pki.otherRoot], [OTHER_TD]: [pki.root] }) }),
  },
  {
    title: 'a leaf with a tampered signature',
    reason: 'bad_signature',
    build: async () => ({ chain: [tamperSignature((await leaf()).der), pki.intermediate.der] }),
  },
  {
    title: 'an intermediate with a tampered signature',
    reason: 'bad_signature',
    build: async () => ({ chain: [(await leaf()).der, tamperSignature(pki.intermediate.der)] }),
  },
  {
    title: 'a root with pathLenConstraint 0 above an intermediate',
    reason: 'path_length_exceeded',
    build: async () => {
      const strictRoot = await root({ basicConstraints: { ca: true, pathLength: 0, critical: true } });
      const below = await forge(caSpec(TD, strictRoot));
      return { chain: [(await forge(leafSpec(ID, below))).der, below.der], bundles: bundlesOf({ [TD]: [strictRoot] }) };
    },
  },
  {
    title: 'an intermediate with pathLenConstraint 0 above another intermediate',
    reason: 'path_length_exceeded',
    build: async () => {
      const upper = await intermediate({ basicConstraints: { ca: true, pathLength: 0, critical: true } });
      const lower = await forge(caSpec(TD, upper, 'lower'));
      return { chain: [(await forge(leafSpec(ID, lower))).der, lower.der, upper.der] };
    },
  },
  {
    title: 'an intermediate permitting only URIs of another trust domain',
    reason: 'name_constraints_violated',
    build: () => chainThrough({ extra: [nameConstraints({ permittedUris: [OTHER_TD] })] }),
  },
  {
    title: 'an intermediate excluding the leaf trust domain',
    reason: 'name_constraints_violated',
    build: () => chainThrough({ extra: [nameConstraints({ excludedUris: [TD] })] }),
  },
  {
    title: 'a root permitting only DNS names the leaf DNS SAN is outside of',
    reason: 'name_constraints_violated',
    build: async () => {
      const constrainedRoot = await root({ extra: [nameConstraints({ permittedDns: ['svc.example.org'] })] });
      const names = [
        { type: 'url' as const, value: ID },
        { type: 'dns' as const, value: 'web.evil.test' },
      ];
      const signed = await forge({ ...leafSpec(ID, constrainedRoot), san: { names, critical: false } });
      return { chain: [signed.der], bundles: bundlesOf({ [TD]: [constrainedRoot] }) };
    },
  },
  {
    title: 'an intermediate with critical name constraints on email addresses',
    reason: 'name_constraints_unsupported',
    build: () => chainThrough({ extra: [nameConstraints({ permittedEmails: ['example.org'] })] }),
  },
  {
    title: 'a trust anchor with critical name constraints on email addresses',
    reason: 'name_constraints_unsupported',
    build: async () => {
      const constrainedRoot = await root({ extra: [nameConstraints({ permittedEmails: ['example.org'] })] });
      return { chain: [(await forge(leafSpec(ID, constrainedRoot))).der], bundles: bundlesOf({ [TD]: [constrainedRoot] }) };
    },
  },
  // time
  {
    title: 'a leaf valid from 31 s in the future (30 s skew)',
    reason: 'not_yet_valid',
    build: async () => ({ chain: [(await leaf({ notBefore: at(31 * SECOND) })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf that expired 31 s ago (30 s skew)',
    reason: 'expired',
    build: async () => ({ chain: [(await leaf({ notAfter: at(-31 * SECOND) })).der, pki.intermediate.der] }),
  },
  {
    title: 'a leaf valid from 1 s in the future with clockSkewMs 0',
    reason: 'not_yet_valid',
    build: async () => ({ chain: [(await leaf({ notBefore: at(SECOND) })).der, pki.intermediate.der], options: { clockSkewMs: 0 } }),
  },
  {
    title: 'an expired intermediate under a valid leaf',
    reason: 'expired',
    build: () => chainThrough({ notBefore: at(-48 * HOUR), notAfter: at(-HOUR) }),
  },
  {
    title: 'an expired trust anchor',
    reason: 'expired',
    build: async () => {
      const oldRoot = await root({ notBefore: at(-48 * HOUR), notAfter: at(-HOUR) });
      return { chain: [(await forge(leafSpec(ID, oldRoot))).der], bundles: bundlesOf({ [TD]: [oldRoot] }) };
    },
  },
  {
    title: 'a trust anchor that is not yet valid',
    reason: 'not_yet_valid',
    build: async () => {
      const futureRoot = await root({ notBefore: at(HOUR), notAfter: at(48 * HOUR) });
      return { chain: [(await forge(leafSpec(ID, futureRoot))).der], bundles: bundlesOf({ [TD]: [futureRoot] }) };
    },
  },
  // identity
  {
    title: 'a valid SVID for another workload than expected',
    reason: 'unexpected_id',
    build: async () => ({ chain: [(await leaf()).der, pki.intermediate.der], options: { expectedId: `spiffe://${TD}/ns/prod/sa/db` } }),
  },
  {
    title: 'a valid SVID whose ID differs from the expected one only in trust domain',
    reason: 'unexpected_id',
    build: async () => ({ chain: [(await leaf()).der, pki.intermediate.der], options: { expectedId: SpiffeId.parse(`spiffe://${OTHER_TD}/ns/prod/sa/web`) } }),
  },
];

for (const c of negative) {
  const expectedClass: SvidFailureClass = failureClassOf(c.reason);
  test(`rejects ${c.title}: ${c.reason} (${expectedClass})`, async (t) => {
    const { chain, bundles, options } = await c.build();
    const err = t.throws(() => validate(chain, bundles, options), { instanceOf: SvidError });
    t.is(err.reason, c.reason, err.message);
    t.is(err.failureClass, expectedClass);
    t.regex(err.message, /^[^\n]{10,}$/);
  });
}

test('the corpus covers every reason the validator can give', (t) => {
  const covered = new Set(negative.map((c) => c.reason));
  t.deepEqual(SVID_REASONS.filter((reason) => !covered.has(reason)), []);
});

test('failure classes: time is "expired", trust is "untrusted", shape is "bad_certificate"', (t) => {
  t.is(failureClassOf('expired'), 'expired');
  t.is(failureClassOf('not_yet_valid'), 'expired');
  for (const reason of ['no_bundle_for_trust_domain', 'no_path_to_trust_anchor', 'bad_signature', 'name_constraints_violated'] as const) {
    t.is(failureClassOf(reason), 'untrusted', reason);
  }
  t.is(failureClassOf('leaf_key_usage_not_critical'), 'bad_certificate');
});

// ---- positive cases --------------------------------------------------------------------------

test('accepts the conforming baseline chain and reports its facts', async (t) => {
  const signed = await leaf();
  const result = validate([signed.der, pki.intermediate.der]);
  t.is(result.id.toString(), ID);
  t.deepEqual(
    result.chain.map((cert) => cert.raw),
    [signed.der, pki.intermediate.der],
  );
  t.deepEqual(result.notBefore, at(-HOUR));
  t.deepEqual(result.notAfter, at(HOUR));
  t.deepEqual(result.earliestNotAfter, at(HOUR));
});

test('accepts X509Certificate objects and returns them as presented', async (t) => {
  const signed = await leaf();
  const chain = [signed.cert, pki.intermediate.cert];
  const result = validate(chain);
  t.is(result.chain[0], signed.cert);
  t.is(result.chain[1], pki.intermediate.cert);
});

test('accepts a leaf signed directly by the root', async (t) => {
  t.is(validate([(await forge(leafSpec(ID, pki.root))).der]).id.toString(), ID);
});

test('accepts two intermediates, in order and out of order', async (t) => {
  const lower = await forge(caSpec(TD, pki.intermediate, 'lower'));
  const signed = await forge(leafSpec(ID, lower));
  t.is(validate([signed.der, lower.der, pki.intermediate.der]).id.toString(), ID);
  t.is(validate([signed.der, pki.intermediate.der, lower.der]).id.toString(), ID);
});

test('accepts a chain that also presents the root, and ignores an unrelated extra CA', async (t) => {
  const signed = await leaf();
  t.is(validate([signed.der, pki.intermediate.der, pki.root.der]).id.toString(), ID);
  const unrelated = await forge(caSpec(TD, pki.root, 'unrelated'));
  t.is(validate([signed.der, unrelated.der, pki.intermediate.der]).id.toString(), ID);
});

test('the leaf is only ever the first certificate', async (t) => {
  // A valid SVID in second position must not rescue a chain whose first certificate is a CA.
  const signed = await leaf();
  const err = t.throws(() => validate([pki.intermediate.der, signed.der]), { instanceOf: SvidError });
  t.is(err.reason, 'leaf_no_path'); // the CA's trust-domain ID judged by the leaf rules
  t.is(err.failureClass, 'bad_certificate');
});

test('accepts extra DNS SANs, no EKU, no basic constraints, and an empty subject with a critical SAN', async (t) => {
  const names = [
    { type: 'url' as const, value: ID },
    { type: 'dns' as const, value: 'web.prod.svc' },
    { type: 'dns' as const, value: 'web.example.org' },
  ];
  const variants: Partial<CertSpec>[] = [
    { san: { names, critical: false } },
    { extKeyUsage: null },
    { basicConstraints: null },
    { subject: '', san: { names: [{ type: 'url', value: ID }], critical: true } },
    { extra: [unknownExtension(false)] },
  ];
  for (const variant of variants) {
    t.is(validate([(await leaf(variant)).der, pki.intermediate.der]).id.toString(), ID, JSON.stringify(Object.keys(variant)));
  }
});

for (const key of ['ec-p256', 'ec-p384', 'ed25519', 'rsa-2048', 'rsa-pss-2048'] as ForgeKey[]) {
  test(`accepts a chain whose root, intermediate and leaf all use ${key}`, async (t) => {
    const typedRoot = await root({ key });
    const typedIntermediate = await forge({ ...caSpec(TD, typedRoot), key });
    const signed = await forge({ ...leafSpec(ID, typedIntermediate), key });
    t.is(validate([signed.der, typedIntermediate.der], bundlesOf({ [TD]: [typedRoot] })).id.toString(), ID);
  });
}

for (const keyAlgorithm of ['ec-p256', 'ec-p384', 'ed25519', 'rsa-2048'] as KeyAlgorithm[]) {
  test(`accepts a DevCa-issued ${keyAlgorithm} SVID`, async (t) => {
    const ca = await DevCa.create({ trustDomain: TD, now: NOW });
    const svid = await ca.issue({ id: ID, ttlMs: HOUR, keyAlgorithm, now: NOW });
    const result = validate(svid.chain, { get: (td) => (td === TD ? [ca.certificate] : undefined) });
    t.is(result.id.toString(), ID);
    t.deepEqual(result.notAfter, at(HOUR));
  });
}

test('accepts a leaf node-forge signed with SHA-256 (control for the MD5 case)', async (t) => {
  const der = await forgeRsaLeafWithNodeForge(ID, pki.rsaRoot, 'sha256');
  t.is(validate([der], bundlesOf({ [TD]: [pki.rsaRoot] })).id.toString(), ID);
});

test('federation: each leaf is checked against the bundle of the trust domain it claims', async (t) => {
  const otherIntermediate = await forge(caSpec(OTHER_TD, pki.otherRoot));
  const otherLeaf = await forge(leafSpec(`spiffe://${OTHER_TD}/ns/x/sa/y`, otherIntermediate));
  const ownLeaf = await leaf();
  t.is(validate([otherLeaf.der, otherIntermediate.der], pki.federated).id.trustDomain, OTHER_TD);
  t.is(validate([ownLeaf.der, pki.intermediate.der], pki.federated).id.trustDomain, TD);
  // The same other.org SVID with only the example.org bundle loaded: no bundle for its domain.
  t.is(t.throws(() => validate([otherLeaf.der, otherIntermediate.der], pki.bundles), { instanceOf: SvidError }).reason, 'no_bundle_for_trust_domain');
});

test('a bundle with two roots of the same name (rotation) validates leaves of either', async (t) => {
  const newRoot = await root();
  const both = bundlesOf({ [TD]: [pki.root, newRoot] });
  const newLeaf = await forge(leafSpec(ID, newRoot));
  t.is(validate([newLeaf.der], both).id.toString(), ID);
  t.is(validate([(await leaf()).der, pki.intermediate.der], both).id.toString(), ID);
});

test('clock skew is allowed on both ends of the validity period', async (t) => {
  const early = await leaf({ notBefore: at(20 * SECOND) });
  const late = await leaf({ notAfter: at(-20 * SECOND) });
  t.is(validate([early.der, pki.intermediate.der]).id.toString(), ID);
  t.is(validate([late.der, pki.intermediate.der]).id.toString(), ID);
  t.is(validate([late.der, pki.intermediate.der], pki.bundles, { clockSkewMs: 60 * SECOND, now: at(35 * SECOND) }).id.toString(), ID);
  t.is(t.throws(() => validate([late.der, pki.intermediate.der], pki.bundles, { clockSkewMs: 0 }), { instanceOf: SvidError }).reason, 'expired');
});

test('earliestNotAfter is the minimum over the path, trust anchor included', async (t) => {
  const shortRoot = await root({ notAfter: at(30 * 60_000) });
  const shortIntermediate = await forge({ ...caSpec(TD, shortRoot), notAfter: at(45 * 60_000) });
  const signed = await forge(leafSpec(ID, shortIntermediate));
  const result = validate([signed.der, shortIntermediate.der], bundlesOf({ [TD]: [shortRoot] }));
  t.deepEqual(result.notAfter, at(HOUR));
  t.deepEqual(result.earliestNotAfter, at(30 * 60_000));
});

test('pathLenConstraint allows exactly as many intermediates as it says', async (t) => {
  const strictRoot = await root({ basicConstraints: { ca: true, pathLength: 1, critical: true } });
  const below = await forge(caSpec(TD, strictRoot));
  t.is(validate([(await forge(leafSpec(ID, below))).der, below.der], bundlesOf({ [TD]: [strictRoot] })).id.toString(), ID);
  const zeroRoot = await root({ basicConstraints: { ca: true, pathLength: 0, critical: true } });
  t.is(validate([(await forge(leafSpec(ID, zeroRoot))).der], bundlesOf({ [TD]: [zeroRoot] })).id.toString(), ID);
});

test('name constraints that the chain satisfies are accepted', async (t) => {
  const constrained = await intermediate({
    extra: [
      nameConstraints({ permittedUris: [TD, `.${TD}`], permittedDns: [TD], excludedDns: ['admin.example.org'] }),
      // Non-critical constraints on a form we do not evaluate are ignored rather than failed.
    ],
  });
  const names = [
    { type: 'url' as const, value: ID },
    { type: 'dns' as const, value: 'web.example.org' },
  ];
  const signed = await forge({ ...leafSpec(ID, constrained), san: { names, critical: false } });
  t.is(validate([signed.der, constrained.der]).id.toString(), ID);
  const lenient = await intermediate({ extra: [nameConstraints({ permittedUris: [TD], permittedEmails: ['example.org'] }, false)] });
  t.is(validate([(await forge(leafSpec(ID, lenient))).der, lenient.der]).id.toString(), ID);
});

test('expectedId matches exactly, as a string or a SpiffeId', async (t) => {
  const chain = [(await leaf()).der, pki.intermediate.der];
  t.is(validate(chain, pki.bundles, { expectedId: ID }).id.toString(), ID);
  t.is(validate(chain, pki.bundles, { expectedId: SpiffeId.parse(ID) }).id.toString(), ID);
  t.is(t.throws(() => validate(chain, pki.bundles, { expectedId: `${ID}/sub` }), { instanceOf: SvidError }).reason, 'unexpected_id');
});

test('cached certificate facts do not carry one validation into the next', async (t) => {
  const signed = await leaf({ notAfter: at(HOUR) });
  const chain = [signed.der, pki.intermediate.der];
  t.is(t.throws(() => validate(chain, pki.bundles, { now: at(2 * HOUR) }), { instanceOf: SvidError }).reason, 'expired');
  t.is(validate(chain).id.toString(), ID);
  t.is(t.throws(() => validate(chain, pki.federated, { expectedId: 'spiffe://other.org/x' }), { instanceOf: SvidError }).reason, 'unexpected_id');
  t.is(t.throws(() => validate(chain, bundlesOf({ [TD]: [pki.otherRoot] })), { instanceOf: SvidError }).reason, 'no_path_to_trust_anchor');
  t.is(validate(chain).id.toString(), ID);
});
