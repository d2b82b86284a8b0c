// The behaviour every identity provider owes the identity store, as ava tests. Each provider's
// test file calls providerConformance() with a harness that wires the provider to a real (or
// realistic) backend. The checks are generic: they hold for streaming providers (spiffe,
// spire-delegated) and issuing ones (dev, vault) alike.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import test, { type ExecutionContext } from 'ava';
import { pino, type Logger } from 'pino';
import type { IdentityProvider, RawBundles, RawSvid } from '../../src/identity/types.js';
import { SpiffeId } from '../../src/identity/spiffe-id.js';
import { RecordingSink } from './recording-sink.js';

export { RecordingSink };

export interface ConformanceHarness {
  provider: IdentityProvider;
  /** IDs to pass to provider.setWanted() before start; the backend grants SVIDs for these. */
  wanted: SpiffeId[];
  /** Makes the backend rotate (re-issue) the SVIDs; the provider must push a new full state. */
  rotate(): Promise<void>;
  /** Tears the backend down (after provider.stop()). */
  close(): Promise<void>;
}

/** What the suite hands to makeHarness. A harness that ignores it still works, but then the
 *  key-leak check only sees what the provider logs here, so pass `env.logger` to the provider. */
export interface HarnessEnv {
  /** A trace-level logger whose output the suite searches for private key material. */
  logger: Logger;
}

const STOP_PROMPT_MS = 2_000;
// Longer than the half-life of the short TTLs harnesses use, so a renewal timer that survived
// stop() would fire inside this window.
const QUIET_AFTER_STOP_MS = 1_500;
const RESOURCE_SETTLE_MS = 2_000;

/** Registers ava tests (titles prefixed with `${name} conformance:`) that every provider must pass. */
export function providerConformance(name: string, makeHarness: (env: HarnessEnv) => Promise<ConformanceHarness>): void {
  // Serial: the event-loop resource check compares counts before and after, which concurrent
  // tests in the same worker would disturb.
  test.serial(`${name} conformance: delivers one SVID per wanted ID, with its key, and a bundle that verifies it`, async (t) => {
    await withRunningProvider(t, makeHarness, async ({ harness, sink }) => {
      const delivered = await sink.until(() => latestMatchingState(sink, harness.wanted, 0), 'an SVID state holding exactly the wanted IDs');
      await sink.until(() => bundleVerifying(sink, delivered), "a bundle state whose CA verifies every wanted ID's leaf");
      t.pass();
    });
  });

  test.serial(`${name} conformance: rotation pushes a new full state with fresh leaves`, async (t) => {
    await withRunningProvider(t, makeHarness, async ({ harness, sink }) => {
      const before = await sink.until(() => latestMatchingState(sink, harness.wanted, 0), 'the first SVID state');
      const oldSerials = new Set([...before.values()].map((svid) => svid.leaf.serialNumber));
      const from = sink.svidStates.length;
      await harness.rotate();
      const after = await sink.until(() => {
        const state = latestMatchingState(sink, harness.wanted, from);
        return state && [...state.values()].every((svid) => !oldSerials.has(svid.leaf.serialNumber)) ? state : undefined;
      }, 'an SVID state after rotate() in which every leaf has a new serial');
      await sink.until(() => bundleVerifying(sink, after), 'a bundle state whose CA verifies the rotated leaves');
      t.pass();
    });
  });

  test.serial(`${name} conformance: stop() is prompt, silences the sink and releases the event loop`, async (t) => {
    const baseline = refedResources();
    await withRunningProvider(t, makeHarness, async ({ harness, sink, stop }) => {
      await sink.until(() => latestMatchingState(sink, harness.wanted, 0), 'the first SVID state');
      await stop();
      const callsAtStop = sink.calls;
      await delay(QUIET_AFTER_STOP_MS);
      t.is(sink.calls, callsAtStop, 'the provider called the sink after stop() resolved');
    });
    await assertResourcesReleased(t, baseline);
  });

  test.serial(`${name} conformance: stop() right after start() is clean, and a fresh provider starts afterwards`, async (t) => {
    const baseline = refedResources();
    await withRunningProvider(t, makeHarness, async ({ sink, stop }) => {
      // Stops while the first issuance or connection is most likely still in flight.
      await stop();
      const callsAtStop = sink.calls;
      await delay(QUIET_AFTER_STOP_MS);
      t.is(sink.calls, callsAtStop, 'the provider called the sink after stop() resolved');
    });
    await assertResourcesReleased(t, baseline);
    await withRunningProvider(t, makeHarness, async ({ harness, sink }) => {
      await sink.until(() => latestMatchingState(sink, harness.wanted, 0), 'an SVID state from the second provider');
    });
  });
}


interface DeliveredSvid {
  leaf: X509Certificate;
  chain: X509Certificate[];
}

interface RunningProvider {
  harness: ConformanceHarness;
  sink: RecordingSink;
  /** Stops the provider (once) and asserts that it was prompt. */
  stop: () => Promise<void>;
}

/** Builds a harness, starts its provider, runs body, and always tears down; then checks the
 *  happy-path invariants: no sink.error and no private key bytes in the provider's log. */
async function withRunningProvider(
  t: ExecutionContext,
  makeHarness: (env: HarnessEnv) => Promise<ConformanceHarness>,
  body: (running: RunningProvider) => Promise<void>,
): Promise<void> {
  const log: string[] = [];
  const logger = pino({ level: 'trace' }, { write: (line: string) => void log.push(line) });
  const harness = await makeHarness({ logger });
  const sink = new RecordingSink();
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      const started = performance.now();
      await harness.provider.stop();
      const took = performance.now() - started;
      t.true(took < STOP_PROMPT_MS, `stop() took ${Math.round(took)} ms`);
    })();
    return stopped;
  };
  try {
    harness.provider.setWanted(harness.wanted);
    await harness.provider.start(sink);
    await body({ harness, sink, stop });
  } finally {
    try {
      await stop();
    } finally {
      await harness.close();
    }
  }
  t.deepEqual(
    sink.errors.map((err) => `${err.kind}: ${err.message}`),
    [],
    'sink.error was called on the happy path',
  );
  assertNoKeyMaterial(t, log.join(''), sink);
}

/** The newest SVID state at index >= from that holds exactly one well-formed SVID per wanted ID. */
function latestMatchingState(sink: RecordingSink, wanted: readonly SpiffeId[], from: number): Map<string, DeliveredSvid> | undefined {
  for (let index = sink.svidStates.length - 1; index >= from; index--) {
    const state = sink.svidStates[index];
    const matched = state && matchState(state, wanted);
    if (matched) return matched;
  }
  return undefined;
}

function matchState(state: RawSvid[], wanted: readonly SpiffeId[]): Map<string, DeliveredSvid> | undefined {
  if (state.length !== wanted.length) return undefined;
  const byId = new Map<string, DeliveredSvid>();
  for (const raw of state) {
    const delivered = parseSvid(raw);
    if (byId.has(delivered.id)) return undefined;
    byId.set(delivered.id, delivered);
  }
  return wanted.every((id) => byId.has(id.toString())) ? byId : undefined;
}

/** Parses one delivered SVID and checks what holds for every provider; a violation throws,
 *  which fails the test with the reason instead of waiting for the timeout. */
function parseSvid(raw: RawSvid): DeliveredSvid & { id: string } {
  if (raw.chain.length === 0) throw new Error('provider delivered an SVID with an empty chain');
  const chain = raw.chain.map((der) => new X509Certificate(der));
  const leaf = chain[0]!;
  const uris = [...(leaf.subjectAltName ?? '').matchAll(/URI:([^,\s]+)/g)].map((match) => match[1]!);
  if (uris.length !== 1) throw new Error(`leaf must carry exactly one URI SAN, found ${uris.length}`);
  const id = uris[0]!;
  if (raw.claimedId !== undefined && raw.claimedId !== id) {
    throw new Error(`SVID claims ${raw.claimedId} but its leaf says ${id}`);
  }
  if (!leaf.checkPrivateKey(createPrivateKey({ key: raw.key, format: 'der', type: 'pkcs8' }))) {
    throw new Error(`the private key delivered for ${id} does not match its leaf`);
  }
  return { id, leaf, chain };
}

/** The newest bundle state in which, for every delivered SVID, its trust domain's CA verifies it. */
function bundleVerifying(sink: RecordingSink, delivered: Map<string, DeliveredSvid>): RawBundles | undefined {
  const latest = sink.bundleStates.at(-1);
  if (!latest) return undefined;
  for (const [id, svid] of delivered) {
    const trustDomain = SpiffeId.parse(id).trustDomain;
    const cas = latest.get(trustDomain)?.map((der) => new X509Certificate(der));
    if (!cas || !chainsToBundle(svid.chain, cas)) return undefined;
  }
  return latest;
}

/** Walks leaf → intermediates until a certificate is signed by one of the bundle CAs. */
function chainsToBundle(chain: X509Certificate[], cas: X509Certificate[]): boolean {
  for (const [index, cert] of chain.entries()) {
    if (cas.some((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey))) return true;
    const issuer = chain[index + 1];
    if (!issuer || !cert.checkIssued(issuer) || !cert.verify(issuer.publicKey)) return false;
  }
  return false;
}

/** Fails if any private key the provider delivered appears in its log in any usual encoding. */
function assertNoKeyMaterial(t: ExecutionContext, logText: string, sink: RecordingSink): void {
  t.false(logText.includes('PRIVATE KEY'), 'the provider logged a PEM private key');
  const searchable = logText.replace(/\\n/g, '\n');
  for (const svid of sink.svidStates.flat()) {
    const base64 = svid.key.toString('base64');
    const encodings = [base64, svid.key.toString('base64url'), svid.key.toString('hex'), ...(base64.match(/.{1,64}/g) ?? [])];
    const leaked = encodings.find((encoded) => encoded.length >= 32 && searchable.includes(encoded));
    t.is(leaked, undefined, 'the provider logged private key bytes');
  }
}

/** Counts of the handles, timers and requests that keep the event loop alive (unref'd ones are not listed). */
function refedResources(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const kind of process.getActiveResourcesInfo()) counts.set(kind, (counts.get(kind) ?? 0) + 1);
  return counts;
}

async function assertResourcesReleased(t: ExecutionContext, baseline: Map<string, number>): Promise<void> {
  const deadline = performance.now() + RESOURCE_SETTLE_MS;
  let extra: string[];
  do {
    extra = [...refedResources()].filter(([kind, count]) => count > (baseline.get(kind) ?? 0)).map(([kind, count]) => `${kind} ×${count - (baseline.get(kind) ?? 0)}`);
    if (extra.length === 0) break;
    await delay(50);
  } while (performance.now() < deadline);
  t.deepEqual(extra, [], 'resources still hold the event loop after stop() and close()');
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
