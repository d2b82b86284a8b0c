// The spiffe provider (SPIFFE Workload API client) against a faithful Workload API server on a
// unix socket: the shared provider conformance suite, then the Workload API's own rules.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { DevCa } from '../src/identity/dev-ca.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { SpiffeProvider } from '../src/identity/providers/spiffe.js';
import { GrpcEndpointError, parseGrpcEndpoint } from '../src/identity/providers/grpc-endpoint.js';
import { workloadApiDefinition } from '../src/identity/providers/grpc-protos.js';
import { spiffeOptionsSchema } from '../src/identity/providers/spiffe-options.js';
import { sleep, type BackoffOptions } from '../src/util/backoff.js';
import { providerConformance } from './helpers/provider-conformance.js';
import { bundleDomainsAre, idsAre, withRunningProvider, type RecordingSink } from './helpers/recording-sink.js';
import { permissionDeniedWithdrawsAndRecovers, reportedAndNeverRetried, unavailableKeepsStateAndBacksOff } from './helpers/identity-api-checks.js';
import { WorkloadApiServer, type WorkloadApiServerOptions } from './servers/workload-api-server.js';

const FAST: BackoffOptions = { initialMs: 40, maxMs: 200, jitter: 0 };
const TD = 'example.org';
const NODE = `spiffe://${TD}/meshauth/node/n1`;
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;

let ca: DevCa;
let partner: DevCa;
test.before(async () => {
  [ca, partner] = await Promise.all([DevCa.create({ trustDomain: TD }), DevCa.create({ trustDomain: 'partner.test' })]);
});

providerConformance('spiffe', async ({ logger }) => {
  const wanted = [NODE, WEB].map((id) => SpiffeId.parse(id));
  const server = await WorkloadApiServer.start({ ca, svids: wanted.map((id) => ({ id: id.toString() })) });
  const provider = new SpiffeProvider({ endpoint: server.address }, { logger, backoff: FAST });
  return { provider, wanted, rotate: () => server.rotate(), close: () => server.close() };
});

interface Running {
  server: WorkloadApiServer;
  provider: SpiffeProvider;
  sink: RecordingSink;
}

/** Starts a server and a provider on it; always stops and closes both. */
async function withProvider(options: Partial<WorkloadApiServerOptions>, body: (running: Running) => Promise<void>): Promise<void> {
  const server = await WorkloadApiServer.start({ ca, svids: [{ id: NODE }], ...options });
  const provider = new SpiffeProvider({ endpoint: server.address }, { backoff: FAST });
  await withRunningProvider(provider, () => server.close(), (sink) => body({ server, provider, sink }));
}

test('delivers every SVID in server order (svids[0] first) with chain, key and hint, and bundles keyed by trust domain name', async (t) => {
  await withProvider({ svids: [{ id: WEB, hint: 'internal' }, { id: NODE, hint: 'external' }], federated: [partner] }, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [WEB, NODE]), 'both SVIDs');
    await sink.until(bundleDomainsAre(sink, ['example.org', 'partner.test']), 'own and federated bundles');
    const [web, node] = sink.svidStates.at(-1)!;
    t.is(web!.hint, 'internal');
    t.is(node!.hint, 'external');
    t.is(web!.chain.length, 1);
    const leaf = new X509Certificate(web!.chain[0]!);
    t.true(leaf.subjectAltName?.includes(`URI:${WEB}`));
    t.true(leaf.checkPrivateKey(createPrivateKey({ key: web!.key, format: 'der', type: 'pkcs8' })));
    const bundles = sink.bundleStates.at(-1)!;
    t.deepEqual(bundles.get('example.org'), [ca.certificate.raw]);
    t.deepEqual(bundles.get('partner.test'), [partner.certificate.raw]);
    t.deepEqual(sink.errors, []);
    t.true(server.calls.length >= 2);
  });
});

test('every call carries workload.spiffe.io: true, including reconnections', async (t) => {
  await withProvider({}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the first state');
    const states = sink.svidStates.length;
    await server.restart();
    await sink.until(() => (sink.svidStates.length > states ? true : undefined), 'a state after the restart');
    t.true(server.callCount('FetchX509SVID') >= 2 && server.callCount('FetchX509Bundles') >= 2, JSON.stringify(server.calls));
    t.deepEqual(
      server.calls.filter((call) => JSON.stringify(call.header) !== '["true"]'),
      [],
    );
  });
});

test('the test server answers InvalidArgument to a raw call without the header, or with a wrong value', async (t) => {
  const server = await WorkloadApiServer.start({ ca, svids: [{ id: NODE }] });
  const client = new grpc.Client(parseGrpcEndpoint(server.address).target, grpc.credentials.createInsecure());
  try {
    const api = workloadApiDefinition();
    const statusOf = (metadata: grpc.Metadata) =>
      new Promise<grpc.StatusObject>((resolve) => {
        const call = client.makeServerStreamRequest(api.fetchX509Svid.path, api.fetchX509Svid.requestSerialize, api.fetchX509Svid.responseDeserialize, {}, metadata);
        call.on('data', () => undefined);
        call.on('error', () => undefined);
        call.on('status', resolve);
      });
    const none = await statusOf(new grpc.Metadata());
    t.is(none.code, grpc.status.INVALID_ARGUMENT);
    t.is(none.details, 'security header missing from request');
    const wrong = new grpc.Metadata();
    wrong.set('workload.spiffe.io', 'TRUE');
    t.is((await statusOf(wrong)).code, grpc.status.INVALID_ARGUMENT);
    t.deepEqual(server.calls.map((call) => call.header), [[], ['TRUE']]);
  } finally {
    client.close();
    await server.close();
  }
});

test('PermissionDenied withdraws every SVID and bundle at once, retries with backoff and recovers', async (t) => {
  await withProvider({ federated: [partner] }, async ({ server, sink }) => {
    const expectedDomains = ['example.org', 'partner.test'];
    await permissionDeniedWithdrawsAndRecovers(t, { server, sink, method: 'FetchX509SVID', streams: 1, message: 'no identity issued', expectedIds: [NODE], expectedDomains });
  });
});

test('an entitlement that ends (no SVIDs left) is PermissionDenied too: the SVIDs are withdrawn', async (t) => {
  await withProvider({}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the first state');
    await server.setSvids([]);
    await sink.until(idsAre(sink, []), 'an empty SVID state');
    await server.setSvids([{ id: WEB }]);
    await sink.until(idsAre(sink, [WEB]), 'the new entitlement after a retry');
    t.true(sink.errorKinds().includes('permission_denied'));
  });
});

test('Unavailable keeps the last SVIDs, backs off instead of spinning, and recovers', async (t) => {
  await withProvider({}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the first state');
    await unavailableKeepsStateAndBacksOff(t, { server, sink, method: 'FetchX509SVID', expectedIds: [NODE] });
  });
});

test('a server restart drops the streams; the provider reconnects and gets the full state again', async (t) => {
  await withProvider({}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the first state');
    const first = new X509Certificate(sink.svidStates.at(-1)![0]!.chain[0]!).serialNumber;
    await server.restart();
    await server.rotate();
    await sink.until(() => {
      const latest = sink.svidStates.at(-1)?.[0];
      return latest && new X509Certificate(latest.chain[0]!).serialNumber !== first ? true : undefined;
    }, 'the rotated SVID over the new connection');
    t.true(server.callCount('FetchX509SVID') >= 2);
  });
});

test('full states: an SVID and a federated bundle removed server-side disappear', async (t) => {
  await withProvider({ svids: [{ id: NODE }, { id: WEB }, { id: DB }], federated: [partner] }, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE, WEB, DB]), 'three SVIDs');
    await sink.until(bundleDomainsAre(sink, ['example.org', 'partner.test']), 'two bundles');
    await server.setSvids([{ id: NODE }, { id: DB }]);
    await sink.until(idsAre(sink, [NODE, DB]), 'WEB withdrawn');
    server.setFederated([]);
    await sink.until(bundleDomainsAre(sink, ['example.org']), 'the federated bundle unloaded');
    t.deepEqual(sink.errors, []);
  });
});

test('of SVIDs sharing a hint the first is kept; SVIDs without a hint all stay', async (t) => {
  const svids = [
    { id: NODE, hint: 'mesh' },
    { id: WEB, hint: 'mesh' },
    { id: DB },
    { id: `spiffe://${TD}/ns/shop/sa/cache` },
  ];
  await withProvider({ svids }, async ({ sink }) => {
    await sink.until(idsAre(sink, [NODE, DB, `spiffe://${TD}/ns/shop/sa/cache`]), 'the second "mesh" SVID dropped');
    t.is(sink.svidStates.at(-1)![0]!.hint, 'mesh');
  });
});

test('a message with a required field left empty is discarded and reported; the last good state stays', async (t) => {
  await withProvider({}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the first state');
    const states = sink.svidStates.length;
    server.setTamper((response) => ({ ...response, svids: response.svids.map((svid) => ({ ...svid, bundle: Buffer.alloc(0) })) }));
    await sink.until(() => (sink.errorKinds().includes('malformed') ? true : undefined), 'a malformed report');
    t.is(sink.svidStates.length, states);
    t.regex(sink.errors.find((err) => err.kind === 'malformed')!.message, /lacks the required bundle/);
    server.setTamper((response) => ({ ...response, svids: response.svids.map((svid) => ({ ...svid, x509_svid: svid.x509_svid.subarray(0, 40) })) }));
    await sink.until(() => (sink.errors.filter((err) => err.kind === 'malformed').length >= 2 ? true : undefined), 'a second malformed report');
    t.is(sink.svidStates.length, states);
    server.setTamper(undefined);
    await sink.until(() => (sink.svidStates.length > states ? true : undefined), 'a good state again');
  });
});

test('InvalidArgument is reported and never retried', async (t) => {
  await withProvider({}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the first state');
    const message = 'security header missing from request';
    await reportedAndNeverRetried(t, { server, sink, status: grpc.status.INVALID_ARGUMENT, message, kind: 'invalid_argument', streams: 2 });
    t.deepEqual(sink.latestIds(), [NODE], 'InvalidArgument is not a withdrawal');
  });
});

test('Unimplemented FetchX509Bundles is reported once and not retried; FetchX509SVID alone carries the bundles', async (t) => {
  await withProvider({ serveBundles: false, federated: [partner] }, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the SVID');
    await sink.until(bundleDomainsAre(sink, ['example.org', 'partner.test']), 'bundles from FetchX509SVID');
    await sink.until(() => (sink.errorKinds().includes('unimplemented') ? true : undefined), 'the unimplemented report');
    await sleep(400);
    t.is(server.callCount('FetchX509Bundles'), 1);
    t.deepEqual(sink.errorKinds(), ['unimplemented']);
  });
});

test('works over tcp://IP:port', async (t) => {
  await withProvider({ tcp: true }, async ({ server, sink }) => {
    t.regex(server.address, /^tcp:\/\/127\.0\.0\.1:\d+$/);
    await sink.until(idsAre(sink, [NODE]), 'the SVID over TCP');
  });
});

test('the endpoint comes from the options, else SPIFFE_ENDPOINT_SOCKET; malformed or missing addresses are rejected', (t) => {
  t.is(new SpiffeProvider({}, { env: { SPIFFE_ENDPOINT_SOCKET: 'unix:///run/spire/agent.sock' } }).endpoint.target, 'unix:/run/spire/agent.sock');
  t.is(new SpiffeProvider({ endpoint: 'tcp://10.0.0.1:8081' }, { env: { SPIFFE_ENDPOINT_SOCKET: 'unix:///x' } }).endpoint.target, 'ipv4:10.0.0.1:8081');
  t.is(parseGrpcEndpoint('tcp://[fd00::1]:8081').target, 'ipv6:[fd00::1]:8081');
  t.throws(() => new SpiffeProvider({}, { env: {} }), { instanceOf: GrpcEndpointError, message: /SPIFFE_ENDPOINT_SOCKET/ });
  t.throws(() => new SpiffeProvider({}, { env: { SPIFFE_ENDPOINT_SOCKET: '' } }), { instanceOf: GrpcEndpointError, message: /SPIFFE_ENDPOINT_SOCKET/ });
  const bad: [string, RegExp][] = [
    ['/run/agent.sock', /no scheme/],
    ['unix:/run/agent.sock', /unix:\/\/\/absolute\/path/],
    ['unix:run/agent.sock', /unix:\/\/\/absolute\/path/],
    ['unix://host/run/agent.sock', /authority/],
    ['unix:///', /path is missing/],
    ['unix:///run/agent.sock?x=1', /query/],
    ['tcp://localhost:8081', /IP address/],
    ['tcp://10.0.0.1', /port/],
    ['tcp://10.0.0.1:0', /port/],
    ['tcp://10.0.0.1:8081/path', /path/],
    ['tcp://user@10.0.0.1:8081', /userinfo/],
    ['http://10.0.0.1:8081', /unsupported scheme "http"/],
    ['', /empty/],
  ];
  for (const [address, why] of bad) {
    t.throws(() => new SpiffeProvider({ endpoint: address }), { instanceOf: GrpcEndpointError, message: why }, address);
  }
  const parsed = spiffeOptionsSchema.safeParse({ endpoint: 'tcp://localhost:1' });
  t.false(parsed.success);
  t.regex(parsed.error?.issues[0]?.message ?? '', /IP address/);
});
