// Every class of bad certificate, presented by the initiator and by the responder: the other side
// refuses it with the right failure class, tells the presenter why, and neither side records.
import test, { type ExecutionContext } from 'ava';
import { HandshakeFailure } from '../src/handshake/failure.js';
import type { SpiffeId } from '../src/identity/spiffe-id.js';
import type { Svid } from '../src/identity/types.js';
import type { FailureClass } from '../src/handshake/protocol.js';
import { KU, type CertSpec, type Forged } from './helpers/cert-forge.js';
import {
  NodeDirectory,
  TestCa,
  metricValue,
  nodeIdOf,
  responderSettled,
  startAgent,
  unvalidatedSvid,
  workloadId,
  type TestAgent,
} from './helpers/handshake-fixtures.js';

const WEB = workloadId('web');
const DB = workloadId('db');
const HOUR = 3_600_000;

interface Cas {
  ca: TestCa;
  rogue: TestCa;
  other: TestCa;
}

interface BadCase {
  name: string;
  failureClass: 'bad_certificate' | 'untrusted' | 'expired';
  /** Builds the bad leaf standing in for `id`. */
  leaf: (cas: Cas, id: SpiffeId) => Promise<Forged>;
  /** The presenting agent's clock offset, so that it still considers its own SVID usable. */
  clockOffsetMs?: number;
  /** Only meaningful for one role. */
  only?: 'initiator' | 'responder';
}

const now = () => Date.now();
const validity = (fromHours: number, toHours: number): Partial<CertSpec> => ({
  notBefore: new Date(now() + fromHours * HOUR),
  notAfter: new Date(now() + toHours * HOUR),
});

const CASES: BadCase[] = [
  { name: 'expired', failureClass: 'expired', leaf: ({ ca }, id) => ca.leaf(id, validity(-3, -2)), clockOffsetMs: -2.5 * HOUR },
  { name: 'not yet valid', failureClass: 'expired', leaf: ({ ca }, id) => ca.leaf(id, validity(2, 3)) },
  { name: 'signed by an untrusted CA', failureClass: 'untrusted', leaf: ({ rogue }, id) => rogue.leaf(id) },
  {
    name: 'claiming a trust domain whose bundle did not sign it',
    failureClass: 'untrusted',
    leaf: ({ ca }, id) => ca.leaf(id, { san: { names: [{ type: 'url', value: `spiffe://b.test${id.path}` }], critical: false } }),
  },
  {
    name: 'with two URI SANs',
    failureClass: 'bad_certificate',
    leaf: ({ ca }, id) =>
      ca.leaf(id, { san: { names: [{ type: 'url', value: id.toString() }, { type: 'url', value: workloadId('other').toString() }], critical: false } }),
  },
  { name: 'that is a CA', failureClass: 'bad_certificate', leaf: ({ ca }, id) => ca.leaf(id, { basicConstraints: { ca: true, critical: true } }) },
  {
    name: 'without digitalSignature',
    failureClass: 'bad_certificate',
    leaf: ({ ca }, id) => ca.leaf(id, { keyUsage: { flags: KU.keyEncipherment | KU.keyAgreement, critical: true } }),
  },
  {
    name: 'for another SPIFFE ID than the one expected',
    failureClass: 'bad_certificate',
    leaf: ({ ca }) => ca.leaf(workloadId('impostor')),
    only: 'responder',
  },
];

let cas: Cas;
test.before(async () => {
  cas = { ca: await TestCa.create('a.test'), rogue: await TestCa.create('a.test', 'rogue root'), other: await TestCa.create('b.test') };
});

async function agents(badRole: 'initiator' | 'responder', bad: Svid[], clockOffsetMs = 0) {
  const directory = new NodeDirectory();
  const bundles = new Map([
    ['a.test', cas.ca.bundle()],
    ['b.test', cas.other.bundle()],
  ]);
  const retry = { attempts: 1 };
  const badAgent = (nodeName: string, address: string) =>
    startAgent({ nodeName, address, ca: cas.ca, bundles, svids: bad, now: () => new Date(Date.now() + clockOffsetMs), settings: { retry } }, directory);
  const goodAgent = (nodeName: string, address: string, workloads: SpiffeId[]) =>
    startAgent({ nodeName, address, ca: cas.ca, bundles, workloads, settings: { retry } }, directory);
  const initiator = badRole === 'initiator' ? await badAgent('node-a', '127.0.0.2') : await goodAgent('node-a', '127.0.0.2', [WEB]);
  const responder = badRole === 'responder' ? await badAgent('node-b', '127.0.0.3') : await goodAgent('node-b', '127.0.0.3', [DB]);
  return { initiator, responder };
}

async function assertRefused(t: ExecutionContext, initiator: TestAgent, responder: TestAgent, attempt: Promise<unknown>, failureClass: FailureClass, validatingRole: 'initiator' | 'responder') {
  const err = await t.throwsAsync(attempt, { instanceOf: HandshakeFailure });
  t.is(err?.failureClass, failureClass, err?.message);
  // The presenter learns the class from the validating side's reject frame.
  t.is(err?.peerReported, validatingRole === 'responder');
  await responderSettled(responder);
  t.deepEqual(initiator.results, []);
  t.deepEqual(responder.results, []);
  const validating = validatingRole === 'initiator' ? initiator : responder;
  t.is(await metricValue(validating.registry, 'meshauth_handshakes_total', { role: validatingRole, result: 'failure', reason: failureClass }), 1);
  const presenting = validatingRole === 'initiator' ? responder : initiator;
  const presentingRole = validatingRole === 'initiator' ? 'responder' : 'initiator';
  t.is(await metricValue(presenting.registry, 'meshauth_handshakes_total', { role: presentingRole, result: 'failure', reason: failureClass }), 1);
  t.is(await metricValue(presenting.registry, 'meshauth_handshakes_total', { result: 'success' }), 0);
}

/** A pair handshake web (node-a) → db (node-b) where `badRole`'s side presents the bad workload
 *  certificate (its node certificate is good): the other side must refuse it. */
async function pairRefused(t: ExecutionContext, badCase: BadCase, badRole: 'initiator' | 'responder') {
  const [node, workload, validatingRole] = badRole === 'initiator' ? (['node-a', WEB, 'responder'] as const) : (['node-b', DB, 'initiator'] as const);
  const leaf = await badCase.leaf(cas, workload);
  const good = await cas.ca.leaf(nodeIdOf(node));
  const { initiator, responder } = await agents(badRole, [unvalidatedSvid(nodeIdOf(node), good), unvalidatedSvid(workload, leaf)], badCase.clockOffsetMs);
  t.teardown(() => Promise.all([initiator.close(), responder.close()]));
  const attempt = initiator.initiator.authenticatePair({ localId: WEB, remoteId: DB, remoteNode: 'node-b', address: { host: responder.address, port: responder.port } });
  await assertRefused(t, initiator, responder, attempt, badCase.failureClass, validatingRole);
}

for (const badCase of CASES) {
  if (badCase.only !== 'responder') {
    test(`pair: the responder refuses an initiator certificate ${badCase.name} (${badCase.failureClass})`, (t) => pairRefused(t, badCase, 'initiator'));
  }
  test(`pair: the initiator refuses a responder certificate ${badCase.name} (${badCase.failureClass})`, (t) => pairRefused(t, badCase, 'responder'));
}

test('node: a bad node certificate is refused in node handshakes too, in both directions', async (t) => {
  for (const badRole of ['initiator', 'responder'] as const) {
    const nodeName = badRole === 'initiator' ? 'node-a' : 'node-b';
    const leaf = await cas.rogue.leaf(nodeIdOf(nodeName));
    const { initiator, responder } = await agents(badRole, [unvalidatedSvid(nodeIdOf(nodeName), leaf)]);
    const attempt = initiator.initiator.authenticateNode({ remoteNode: 'node-b', address: { host: responder.address, port: responder.port } });
    try {
      await assertRefused(t, initiator, responder, attempt, 'untrusted', badRole === 'initiator' ? 'responder' : 'initiator');
    } finally {
      await Promise.all([initiator.close(), responder.close()]);
    }
  }
});
