// Handshake throughput and latency: meshauth's pair handshake (TLS 1.3 mutual auth + X509-SVID
// validation + verdict frames + recording on both sides) against plain node:tls mutual TLS 1.3
// with the same certificates (OpenSSL chain verification against the CA, one confirmation byte
// from the server so that both measure "the server has verified the client").
//
// Layout: this process is the initiator; a forked child process is the responder (one listener,
// one event loop), so the two ends do not share an event loop. All handshakes come from one
// source address, so the responder's per-source rate limits are lifted for the run.
//
//   npm run bench:handshake [-- --json] [-- --seconds=2 --rounds=3]
// With --json the last line of output is one JSON object.
import { fork, type ChildProcess } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { connect, createSecureContext, createServer, type SecureContext } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { DevCa } from '../src/identity/dev-ca.js';
import { IdentityStore } from '../src/identity/store.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import type { IdentityProvider, ProviderSink, RawBundles, RawSvid } from '../src/identity/types.js';
import { handshakeOptionsSchema } from '../src/handshake/handshake-options.js';
import { HandshakeInitiator } from '../src/handshake/initiator.js';
import { HandshakeResponder } from '../src/handshake/responder.js';
import { LocalIdentities } from '../src/handshake/local-identities.js';
import { PeerValidator } from '../src/handshake/peer-validator.js';
import { defaultNodeIdentityScheme } from '../src/handshake/node-identity.js';
import type { NodeFrame } from '../src/handshake/frames.js';
import { silentLogger } from '../src/util/logger.js';

const TD = 'bench.test';
const CONCURRENCIES = [1, 4];
const HOST = '127.0.0.1';
const workload = (name: string) => SpiffeId.parse(`spiffe://${TD}/ns/bench/sa/${name}`);
const nodeId = (name: string) => SpiffeId.parse(`spiffe://${TD}/meshauth/node/${name}`);

interface WireSvid {
  chain: string[];
  key: string;
  claimedId: string;
}

interface ResponderSetup {
  bundle: string[];
  svids: WireSvid[];
}

interface ResponderPorts {
  meshauth: number;
  baseline: number;
}

const toWire = (svid: RawSvid): WireSvid => ({ chain: svid.chain.map((der) => der.toString('base64')), key: svid.key.toString('base64'), claimedId: svid.claimedId! });
const fromWire = (svid: WireSvid): RawSvid => ({ chain: svid.chain.map((der) => Buffer.from(der, 'base64')), key: Buffer.from(svid.key, 'base64'), claimedId: svid.claimedId });

/** Hands a fixed set of SVIDs and bundles to the identity store. */
class FixedProvider implements IdentityProvider {
  readonly name = 'file' as const;
  constructor(
    private readonly svids: RawSvid[],
    private readonly bundles: RawBundles,
  ) {}
  start(sink: ProviderSink): Promise<void> {
    sink.bundles(this.bundles);
    sink.svids(this.svids);
    return Promise.resolve();
  }
  setWanted(): void {}
  stop(): Promise<void> {
    return Promise.resolve();
  }
}

// Production agents keep their limits; the bench sends everything from one address.
const BENCH_SETTINGS = handshakeOptionsSchema.parse({
  listenAddress: HOST,
  port: 0,
  rateLimit: { perSecond: 1e9, burst: 1e9, maxOpenPerSource: 1e6 },
  retry: { attempts: 1 },
});

async function agentParts(node: string, svids: RawSvid[], bundle: Buffer[]) {
  const logger = silentLogger();
  const store = new IdentityStore({ provider: new FixedProvider(svids, new Map([[TD, bundle]])), nodeId: nodeId(node), clockSkewMs: 30_000, maxChainDepth: 5, logger });
  await store.start();
  const identities = new LocalIdentities(store);
  const validator = new PeerValidator({ bundles: store.trustBundles, clockSkewMs: 30_000, maxChainDepth: 5, cacheSize: BENCH_SETTINGS.validationCacheSize });
  const localNodeFrame = (): NodeFrame => ({ nodeName: node, podCidrs: [] });
  return { logger, identities, validator, nodeIds: defaultNodeIdentityScheme(TD), localNodeFrame };
}

function pemOf(svid: RawSvid): { cert: string; key: string } {
  return {
    cert: svid.chain.map((der) => new X509Certificate(der).toString()).join(''),
    key: createPrivateKey({ key: svid.key, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

// ---- responder process ----

/** Starts both servers; answers 'count' messages with the number of results recorded. */
async function runResponder(setup: ResponderSetup): Promise<ResponderPorts> {
  const bundle = setup.bundle.map((der) => Buffer.from(der, 'base64'));
  const svids = setup.svids.map(fromWire);
  const parts = await agentParts('bench-b', svids, bundle);
  let recorded = 0;
  const responder = new HandshakeResponder({
    ...parts,
    resolveNode: () => 'bench-a',
    authorize: () => true,
    onAuthenticated: () => void recorded++,
    settings: BENCH_SETTINGS,
  });
  const meshauth = await responder.listen();
  process.on('message', (message) => {
    if (message === 'count') process.send!({ recorded });
  });
  const ca = new X509Certificate(bundle[0]!).toString();
  const server = createServer({ ...pemOf(svids[1]!), ca, minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', requestCert: true, rejectUnauthorized: true });
  server.on('connection', (socket: Socket) => socket.setNoDelay(true));
  server.on('secureConnection', (socket) => socket.end('k'));
  server.on('tlsClientError', () => {});
  server.listen(0, HOST);
  await once(server, 'listening');
  return { meshauth: meshauth.port, baseline: (server.address() as { port: number }).port };
}

// ---- initiator process ----

interface Sample {
  handshakesPerSecond: number;
  p50Ms: number;
  p99Ms: number;
}

/** Runs `concurrency` loops of one(i) for `seconds` and returns throughput and latency. */
async function measure(concurrency: number, seconds: number, one: (loop: number) => Promise<void>): Promise<Sample> {
  const latencies: number[] = [];
  const started = performance.now();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, loop) => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await one(loop);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))]!;
  return { handshakesPerSecond: latencies.length / elapsed, p50Ms: at(0.5), p99Ms: at(0.99) };
}

function baselineHandshake(port: number, context: SecureContext): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: HOST, port, secureContext: context, servername: 'bench', minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3', rejectUnauthorized: true, checkServerIdentity: () => undefined });
    socket.setNoDelay(true);
    socket.once('data', () => {
      socket.end();
      resolve();
    });
    socket.once('error', reject);
  });
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

function argument(name: string, fallback: number): number {
  const found = process.argv.find((arg) => arg.startsWith(`--${name}=`));
  return found ? Number(found.split('=')[1]) : fallback;
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  const seconds = argument('seconds', 2);
  const rounds = argument('rounds', 3);
  const ca = await DevCa.create({ trustDomain: TD });
  const pairs = CONCURRENCIES.at(-1)!;
  const issue = (id: SpiffeId) => ca.issue({ id, ttlMs: 3_600_000 });
  const initiatorSvids = [await issue(nodeId('bench-a')), ...(await Promise.all(Array.from({ length: pairs }, (_, i) => issue(workload(`web-${i}`)))))];
  const responderSvids = [await issue(nodeId('bench-b')), ...(await Promise.all(Array.from({ length: pairs }, (_, i) => issue(workload(`db-${i}`)))))];

  const child: ChildProcess = fork(fileURLToPath(import.meta.url), ['--responder'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  try {
    child.send({ bundle: ca.bundle().map((der) => der.toString('base64')), svids: responderSvids.map(toWire) } satisfies ResponderSetup);
    const [ports] = (await once(child, 'message')) as [ResponderPorts];

    const parts = await agentParts('bench-a', initiatorSvids, ca.bundle());
    let recorded = 0;
    const initiator = new HandshakeInitiator({ ...parts, onAuthenticated: () => void recorded++, settings: BENCH_SETTINGS });
    const address = { host: HOST, port: ports.meshauth };
    const meshauth = (loop: number) =>
      initiator.authenticatePair({ localId: workload(`web-${loop}`), remoteId: workload(`db-${loop}`), remoteNode: 'bench-b', address }).then(() => undefined);
    const baselineContext = createSecureContext({ ...pemOf(initiatorSvids[1]!), ca: ca.certificate.toString(), minVersion: 'TLSv1.3' });
    const baseline = () => baselineHandshake(ports.baseline, baselineContext);

    // Warm up both paths (JIT, validation cache, connection setup).
    await measure(1, 0.5, baseline);
    await measure(1, 0.5, meshauth);

    // Rounds alternate between the two, so that noise from other load hits both alike.
    const samples = new Map<string, Sample[]>();
    for (let round = 0; round < rounds; round++) {
      for (const concurrency of CONCURRENCIES) {
        for (const [name, one] of [['baseline', baseline], ['meshauth', meshauth]] as const) {
          const key = `${name}/${concurrency}`;
          samples.set(key, [...(samples.get(key) ?? []), await measure(concurrency, seconds, one)]);
        }
      }
    }
    initiator.close();
    child.send('count');
    const [{ recorded: recordedByResponder }] = (await once(child, 'message')) as [{ recorded: number }];

    const summary = (key: string): Sample => {
      const list = samples.get(key)!;
      return { handshakesPerSecond: median(list.map((s) => s.handshakesPerSecond)), p50Ms: median(list.map((s) => s.p50Ms)), p99Ms: median(list.map((s) => s.p99Ms)) };
    };
    const perConcurrency = Object.fromEntries(
      CONCURRENCIES.map((concurrency) => {
        const base = summary(`baseline/${concurrency}`);
        const ours = summary(`meshauth/${concurrency}`);
        return [
          concurrency,
          {
            baseline_hs_per_s: round1(base.handshakesPerSecond),
            baseline_p50_ms: round2(base.p50Ms),
            baseline_p99_ms: round2(base.p99Ms),
            meshauth_hs_per_s: round1(ours.handshakesPerSecond),
            meshauth_p50_ms: round2(ours.p50Ms),
            meshauth_p99_ms: round2(ours.p99Ms),
            ratio: round2(ours.handshakesPerSecond / base.handshakesPerSecond),
          },
        ];
      }),
    );
    const rows = Object.values(perConcurrency);
    const result = {
      node: process.version,
      seconds_per_sample: seconds,
      rounds,
      baseline_hs_per_s: Math.max(...rows.map((row) => row.baseline_hs_per_s)),
      meshauth_hs_per_s: Math.max(...rows.map((row) => row.meshauth_hs_per_s)),
      ratio_min: Math.min(...rows.map((row) => row.ratio)),
      p99_ms: perConcurrency[1]!.meshauth_p99_ms,
      // One handshake records both directions: these two must match.
      recorded_by_initiator: recorded,
      recorded_by_responder: recordedByResponder,
      per_concurrency: perConcurrency,
    };
    if (!json) {
      console.log(`handshake bench on Node ${process.version}: median of ${rounds} rounds × ${seconds} s per cell`);
      for (const [concurrency, row] of Object.entries(perConcurrency)) {
        console.log(
          `  concurrency ${concurrency}: baseline ${row.baseline_hs_per_s}/s (p50 ${row.baseline_p50_ms} ms, p99 ${row.baseline_p99_ms} ms)` +
            `  meshauth ${row.meshauth_hs_per_s}/s (p50 ${row.meshauth_p50_ms} ms, p99 ${row.meshauth_p99_ms} ms)  ratio ${row.ratio}`,
        );
      }
    }
    console.log(JSON.stringify(result));
  } finally {
    child.kill();
  }
}

const round1 = (value: number) => Math.round(value * 10) / 10;
const round2 = (value: number) => Math.round(value * 100) / 100;

if (process.argv.includes('--responder')) {
  process.once('message', (setup: ResponderSetup) => {
    runResponder(setup).then(
      (ports) => process.send!(ports),
      (err: unknown) => {
        console.error(err);
        process.exit(1);
      },
    );
  });
  process.on('disconnect', () => process.exit(0));
} else {
  await main();
}
