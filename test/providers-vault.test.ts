import test, { type ExecutionContext } from 'ava';
import { X509Certificate, randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { px509 } from '../src/identity/x509.js';
import type { ProviderError, ProviderSink, RawBundles, RawSvid } from '../src/identity/types.js';
import { VaultProvider, type VaultTiming } from '../src/identity/providers/vault.js';
import { vaultOptionsSchema } from '../src/identity/providers/vault-options.js';
import { VaultTestServer, type VaultTestServerOptions } from './servers/vault-server.js';
import { providerConformance } from './helpers/provider-conformance.js';

const TRUST_DOMAIN = 'example.org';
const FRONTEND = SpiffeId.parse('spiffe://example.org/ns/default/sa/frontend');
const BACKEND = SpiffeId.parse('spiffe://example.org/ns/default/sa/backend');
const K8S_ROLE = 'meshauth-agent';
// Fast, deterministic retries: delays 90, 180, 360 … ms (random 0.5 with 20 % jitter).
const FAST: Partial<VaultTiming> = { retryInitialMs: 100, retryMaxMs: 1_000, renewJitter: 0, random: () => 0.5 };

interface Setup {
  server: VaultTestServer;
  provider: VaultProvider;
  sink: TestSink;
  /** Everything the provider logged. */
  logs: string[];
  /** The secrets that must never show up in logs or errors. */
  token: string;
  jwt: string;
  dir: string;
}

interface SetupOptions {
  auth?: 'token' | 'kubernetes';
  /** Lease of tokens from a Kubernetes login, and whether renew-self may extend them. */
  loginTtlS?: number;
  renewable?: boolean;
  ttl?: string;
  server?: Partial<VaultTestServerOptions>;
  vault?: Record<string, unknown>;
  timing?: Partial<VaultTiming>;
  wanted?: SpiffeId[];
  /** Start the provider (default true). */
  start?: boolean;
  /** The node's own identity, as the agent passes it. */
  nodeId?: SpiffeId;
}

async function setup(t: ExecutionContext, options: SetupOptions = {}): Promise<Setup> {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-vault-'));
  const token = `hvs.${randomBytes(18).toString('base64url')}`;
  const jwt = `eyJ${randomBytes(30).toString('base64url')}`;
  const server = await VaultTestServer.start({
    trustDomain: TRUST_DOMAIN,
    role: { name: 'meshauth', allowedUriSans: ['spiffe://example.org/*'] },
    kubernetes: { role: K8S_ROLE, jwt, tokenTtlS: options.loginTtlS ?? 60, renewable: options.renewable ?? true },
    ...options.server,
  });
  server.addToken(token);
  await writeFile(join(dir, 'token'), `${token}\n`, { mode: 0o600 });
  await writeFile(join(dir, 'jwt'), jwt, { mode: 0o600 });
  const auth =
    (options.auth ?? 'token') === 'token'
      ? { method: 'token', tokenFile: join(dir, 'token') }
      : { method: 'kubernetes', role: K8S_ROLE, jwtFile: join(dir, 'jwt') };
  const vaultOptions = vaultOptionsSchema.parse({ address: server.url, role: 'meshauth', ttl: options.ttl ?? '1h', auth, ...options.vault });
  const logs: string[] = [];
  const logger = pino({ level: 'trace' }, { write: (line: string) => void logs.push(line) });
  const provider = new VaultProvider(vaultOptions, { logger, timing: { ...FAST, ...options.timing }, ...(options.nodeId && { nodeId: options.nodeId.toString() }) });
  const sink = new TestSink();
  t.teardown(async () => {
    await provider.stop();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });
  provider.setWanted(options.wanted ?? [FRONTEND]);
  if (options.start ?? true) await provider.start(sink);
  return { server, provider, sink, logs, token, jwt, dir };
}

/** Records every sink call with its time. */
class TestSink implements ProviderSink {
  readonly svidStates: Array<{ at: number; svids: RawSvid[] }> = [];
  readonly bundleStates: RawBundles[] = [];
  readonly errors: Array<{ at: number; error: ProviderError }> = [];
  private waiters = new Set<() => void>();

  svids(svids: RawSvid[]): void {
    this.svidStates.push({ at: Date.now(), svids: [...svids] });
    this.notify();
  }

  bundles(bundles: RawBundles): void {
    this.bundleStates.push(new Map(bundles));
    this.notify();
  }

  error(error: ProviderError): void {
    this.errors.push({ at: Date.now(), error });
    this.notify();
  }

  get latest(): RawSvid[] | undefined {
    return this.svidStates.at(-1)?.svids;
  }

  /** Resolves with check()'s first defined result, re-checked after every sink call. */
  until<T>(check: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
    return new Promise((resolve, reject) => {
      const attempt = (): void => {
        const found = check();
        if (found === undefined) return;
        done();
        resolve(found);
      };
      const timer = setTimeout(() => {
        done();
        const errors = this.errors.map(({ error }) => `${error.kind}: ${error.message}`).join('; ');
        reject(new Error(`timed out waiting for ${what} (errors: ${errors || 'none'})`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(attempt);
      };
      this.waiters.add(attempt);
      attempt();
    });
  }

  private notify(): void {
    for (const waiter of [...this.waiters]) waiter();
  }
}

/** Polls for conditions that no sink call announces (server counters). */
async function eventually(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function leafOf(svid: RawSvid): X509Certificate {
  return new X509Certificate(svid.chain[0] as Buffer);
}

/** The latest SVID state holding exactly these IDs, as ID → SVID. */
function stateWith(sink: TestSink, ids: SpiffeId[]): Map<string, RawSvid> | undefined {
  const latest = sink.latest;
  if (!latest || latest.length !== ids.length) return undefined;
  const byId = new Map(latest.map((svid) => [svid.claimedId ?? '', svid]));
  return ids.every((id) => byId.has(id.toString())) ? byId : undefined;
}

function firstSvid(sink: TestSink, id = FRONTEND): Promise<RawSvid> {
  return sink.until(() => stateWith(sink, [id])?.get(id.toString()), `an SVID for ${id.toString()}`);
}

function errorMatching(sink: TestSink, pattern: RegExp, from = 0): Promise<ProviderError> {
  return sink.until(() => sink.errors.slice(from).find(({ error }) => pattern.test(error.message))?.error, `an error matching ${pattern}`);
}

/** No token or JWT in any log line or error message. */
function assertNoSecrets(t: ExecutionContext, setup: Setup): void {
  const secrets = [setup.token, setup.jwt, ...setup.server.tokensSeen];
  const texts = [...setup.logs, ...setup.sink.errors.map(({ error }) => error.message)];
  for (const secret of new Set(secrets)) {
    t.false(
      texts.some((text) => text.includes(secret)),
      'a Vault token or the service-account JWT leaked into a log line or an error',
    );
  }
}

providerConformance('vault', async ({ logger }) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-vault-conf-'));
  const jwt = `eyJ${randomBytes(30).toString('base64url')}`;
  const server = await VaultTestServer.start({
    trustDomain: TRUST_DOMAIN,
    role: { name: 'meshauth', allowedUriSans: ['spiffe://example.org/*'] },
    kubernetes: { role: K8S_ROLE, jwt, tokenTtlS: 60 },
  });
  await writeFile(join(dir, 'jwt'), jwt, { mode: 0o600 });
  const options = vaultOptionsSchema.parse({
    address: server.url,
    role: 'meshauth',
    // Short enough that renewal (at 2/3) shows within the suite's patience.
    ttl: '2s',
    auth: { method: 'kubernetes', role: K8S_ROLE, jwtFile: join(dir, 'jwt') },
  });
  return {
    provider: new VaultProvider(options, { logger, timing: FAST }),
    wanted: [FRONTEND, BACKEND],
    // A new issuer under the same root; the short TTL makes the provider re-issue promptly.
    rotate: () => server.rotateIssuer(),
    close: async () => {
      await server.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

test('token auth: issues with the file token, the ID as the only URI SAN and a CN kept out of the SANs', async (t) => {
  const s = await setup(t);
  const svid = await firstSvid(s.sink);
  t.is(s.server.calls.login, 0);
  t.true(s.server.tokensSeen.length > 0 && s.server.tokensSeen.every((seen) => seen === s.token));
  t.like(s.server.issued[0], {
    commonName: 'frontend',
    uriSans: [FRONTEND.toString()],
    ttl: '3600s',
    format: 'pem',
    privateKeyFormat: 'pkcs8',
    excludeCnFromSans: true,
  });
  const leaf = leafOf(svid);
  t.is(leaf.subjectAltName, `URI:${FRONTEND.toString()}`);
  t.is(svid.claimedId, FRONTEND.toString());
  t.deepEqual(s.sink.errors, []);
  assertNoSecrets(t, s);
});

test('token auth: a token rotated in the file is used for the next issuance', async (t) => {
  const s = await setup(t, { ttl: '2s' });
  await firstSvid(s.sink);
  const rotated = `hvs.${randomBytes(18).toString('base64url')}`;
  s.server.addToken(rotated);
  await writeFile(join(s.dir, 'token'), rotated);
  await eventually(() => s.server.issued.at(-1)?.token === rotated, 'an issuance with the rotated token');
  t.is(s.server.issued.at(-1)?.token, rotated);
  assertNoSecrets(t, { ...s, token: rotated });
});

test('kubernetes auth: logs in with role and JWT, then renews the token with renew-self before its lease ends', async (t) => {
  // A 2 s lease: renew-self is due every ~1.33 s.
  const s = await setup(t, { auth: 'kubernetes', loginTtlS: 2 });
  await firstSvid(s.sink);
  t.is(s.server.calls.login, 1);
  const loginToken = s.server.tokensSeen[0];
  t.true(loginToken?.startsWith('hvs.'));
  t.not(loginToken, s.token, 'the issuance used the login token, not a configured one');
  await eventually(() => s.server.calls.renew >= 2, 'two renew-self calls', 8_000);
  t.is(s.server.calls.login, 1, 'a renewable token is renewed, not replaced');
  t.true(s.server.tokensSeen.every((seen) => seen === loginToken));
  t.deepEqual(s.sink.errors, []);
  assertNoSecrets(t, s);
});

test('kubernetes auth: a token that is not renewable is replaced by a fresh login', async (t) => {
  const s = await setup(t, { auth: 'kubernetes', loginTtlS: 1, renewable: false });
  await firstSvid(s.sink);
  await eventually(() => s.server.calls.login >= 3, 'two more logins', 5_000);
  t.is(s.server.calls.renew, 0);
  t.deepEqual(s.sink.errors, []);
});

test('kubernetes auth: a refused renew-self falls back to a new login', async (t) => {
  const s = await setup(t, { auth: 'kubernetes', loginTtlS: 1 });
  await firstSvid(s.sink);
  s.server.fail('renew', 'forbidden');
  await eventually(() => s.server.calls.login >= 2, 'a second login', 5_000);
  const error = await errorMatching(s.sink, /renew-self failed with 403: permission denied/);
  t.is(error.kind, 'auth');
  assertNoSecrets(t, s);
});

test('kubernetes auth: a wrong JWT is reported as an auth error and nothing is issued', async (t) => {
  const s = await setup(t, { auth: 'kubernetes' });
  await writeFile(join(s.dir, 'jwt'), 'eyJnot-the-right-one');
  const error = await errorMatching(s.sink, /login failed with 403: permission denied/);
  t.is(error.kind, 'auth');
  t.is(s.server.calls.issue, 0);
  t.false(s.logs.join('').includes('eyJnot-the-right-one'));
  assertNoSecrets(t, s);
});

test('renews at 2/3 of a short TTL, before the certificate expires', async (t) => {
  const s = await setup(t, { ttl: '3s' });
  const first = await firstSvid(s.sink);
  const firstAt = s.sink.svidStates.at(-1)?.at ?? 0;
  const firstSerial = leafOf(first).serialNumber;
  const second = await s.sink.until(() => {
    const svid = stateWith(s.sink, [FRONTEND])?.get(FRONTEND.toString());
    return svid && leafOf(svid).serialNumber !== firstSerial ? svid : undefined;
  }, 'a renewed SVID');
  const renewedAt = s.sink.svidStates.at(-1)?.at ?? 0;
  const notAfter = new Date(leafOf(first).validTo).getTime();
  // When it is due is read from the provider's own word, the line it logged when it issued the
  // first SVID: 2/3 of the lifetime left then (jitter is off); the line's time stands in for the
  // issuance's, a few statements earlier. When the renewal then completes is up to the machine
  // (timers, issuance): no earlier than due, and before the first SVID expires.
  const issued = s.logs
    .map((line) => JSON.parse(line) as { msg?: string; time: number; spiffeId?: string; renewInMs?: number })
    .find((line) => line.msg === 'vault issued an SVID' && line.spiffeId === FRONTEND.toString());
  t.truthy(issued, 'the issuance was logged');
  const scheduled = ((notAfter - issued!.time) * 2) / 3;
  t.true(Math.abs(issued!.renewInMs! - scheduled) < 200, `renewal scheduled in ${issued!.renewInMs} ms, 2/3 of the lifetime is ${Math.round(scheduled)} ms`);
  const due = ((notAfter - firstAt) * 2) / 3;
  t.log(`renewed after ${renewedAt - firstAt} ms, due after ${Math.round(due)} ms`);
  t.true(renewedAt - firstAt >= due - 100, 'not before it was due');
  t.true(renewedAt < notAfter, 'before the first SVID expired');
  t.not(leafOf(second).serialNumber, firstSerial);
  t.is(s.server.calls.issue, 2);
});

test('503 sealed during renewal: the old SVID is kept until it expires, the error carries Vault\'s text, then recovery', async (t) => {
  const s = await setup(t, { ttl: '3s' });
  const first = await firstSvid(s.sink);
  const firstSerial = leafOf(first).serialNumber;
  const notAfter = new Date(leafOf(first).validTo).getTime();
  s.server.fail('issue', 'sealed');
  const sealed = await errorMatching(s.sink, /Vault is sealed/);
  t.is(sealed.kind, 'http');
  t.regex(sealed.message, /failed with 503: Vault is sealed/);
  t.true(s.logs.some((line) => line.includes('Vault is sealed')), 'the log line carries Vault\'s error text');
  t.is(leafOf(s.sink.latest?.[0] as RawSvid).serialNumber, firstSerial, 'the old SVID stays in the state');
  // Retries continue with backoff; at notAfter the SVID leaves the state.
  await s.sink.until(() => (s.sink.latest?.length === 0 ? true : undefined), 'the expired SVID withdrawn');
  t.true(Date.now() >= notAfter - 50, 'withdrawn only once expired');
  t.true(s.sink.errors.length >= 2, 'retried while sealed');
  t.is(s.sink.bundleStates.at(-1)?.get(TRUST_DOMAIN)?.length, 1, 'the bundle outlives the expired SVID');
  s.server.heal();
  const recovered = await firstSvid(s.sink);
  t.not(leafOf(recovered).serialNumber, firstSerial);
});

test('429: retried with growing backoff, then delivered', async (t) => {
  const s = await setup(t, { start: false });
  s.server.fail('issue', 'rate-limited', 3);
  await s.provider.start(s.sink);
  await firstSvid(s.sink);
  t.is(s.server.calls.issue, 4);
  t.is(s.sink.errors.length, 3);
  for (const { error } of s.sink.errors) {
    t.is(error.kind, 'http');
    t.regex(error.message, /failed with 429: request path "pki\/issue\/meshauth": rate limit quota exceeded/);
  }
  const at = s.sink.errors.map((entry) => entry.at);
  const gaps = [(at[1] ?? 0) - (at[0] ?? 0), (at[2] ?? 0) - (at[1] ?? 0)];
  // Backoff delays 90 ms then 180 ms (FAST timing): each gap is at least its (doubling) delay.
  // Only lower bounds: on a loaded machine request latency adds to any gap.
  t.true((gaps[0] ?? 0) >= 85 && (gaps[1] ?? 0) >= 170, `gaps ${gaps.join(', ')} ms`);
});

test('a bad gateway (no Vault error body) and a 500 are retried', async (t) => {
  const s = await setup(t, { start: false });
  s.server.fail('issue', 'bad-gateway', 1);
  s.server.fail('issue', 'internal', 1);
  await s.provider.start(s.sink);
  await firstSvid(s.sink);
  t.deepEqual(
    s.sink.errors.map(({ error }) => error.message),
    [
      'vault POST pki/issue/meshauth failed with 502: HTTP 502 without an error text',
      'vault POST pki/issue/meshauth failed with 500: internal error',
    ],
  );
});

test('403 on issuance: one re-login and retry, without an error when that succeeds', async (t) => {
  const s = await setup(t, { auth: 'kubernetes', ttl: '2s' });
  const first = await firstSvid(s.sink);
  s.server.revokeAllTokens();
  const renewed = await s.sink.until(() => {
    const svid = stateWith(s.sink, [FRONTEND])?.get(FRONTEND.toString());
    return svid && leafOf(svid).serialNumber !== leafOf(first).serialNumber ? svid : undefined;
  }, 'an SVID renewed after the token was revoked');
  t.truthy(renewed);
  t.is(s.server.calls.login, 2);
  t.deepEqual(s.sink.errors, []);
  assertNoSecrets(t, s);
});

test('403 that a fresh login does not cure: an auth error with Vault\'s text, retried with backoff', async (t) => {
  const s = await setup(t, { auth: 'kubernetes', start: false });
  s.server.fail('issue', 'forbidden');
  await s.provider.start(s.sink);
  const error = await errorMatching(s.sink, /permission denied/);
  t.is(error.kind, 'auth');
  t.is(error.message, 'vault POST pki/issue/meshauth failed with 403: permission denied');
  t.is(s.server.calls.login, 2, 'one login, then exactly one re-login for the refused issuance');
  t.is(s.server.calls.issue, 2);
  await errorMatching(s.sink, /permission denied/, 1);
  t.true(s.server.calls.issue >= 4, 'retried after backoff');
  assertNoSecrets(t, s);
});

test('400 from a role restriction is reported with Vault\'s text; other IDs are still issued', async (t) => {
  const outsider = SpiffeId.parse('spiffe://other.org/ns/default/sa/intruder');
  const s = await setup(t, { wanted: [FRONTEND, outsider] });
  const error = await errorMatching(s.sink, /not allowed by this role/);
  t.is(error.kind, 'http');
  t.is(error.message, 'vault POST pki/issue/meshauth failed with 400: URI Subject Alternative Name spiffe://other.org/ns/default/sa/intruder not allowed by this role');
  t.true(s.logs.some((line) => line.includes('not allowed by this role') && line.includes(outsider.toString())));
  await firstSvid(s.sink);
  t.false(s.sink.bundleStates.at(-1)?.has('other.org'), 'no bundle for a domain nothing was issued for');
});

test('nodeRole: the node identity is issued through its own role, workload identities through role', async (t) => {
  // The tightest Vault setup (docs/kubernetes.md, key custody): the workload role cannot issue
  // node identities, and the node role only this node's (Vault would template it on the login).
  const NODE_A = SpiffeId.parse('spiffe://example.org/meshauth/node/node-a');
  const s = await setup(t, {
    nodeId: NODE_A,
    wanted: [FRONTEND, NODE_A],
    vault: { nodeRole: 'meshauth-node-a' },
    server: {
      role: { name: 'meshauth', allowedUriSans: ['spiffe://example.org/ns/*'] },
      extraRoles: [{ name: 'meshauth-node-a', allowedUriSans: [NODE_A.toString()] }],
    },
  });
  const svids = await s.sink.until(() => (s.sink.latest?.length === 2 ? s.sink.latest : undefined), 'both SVIDs');
  t.deepEqual(svids.map((svid) => svid.claimedId).sort(), [FRONTEND.toString(), NODE_A.toString()].sort());
  t.deepEqual(s.sink.errors, []);
  const roleOf = new Map(s.server.issued.map((issued) => [issued.uriSans[0], issued.role]));
  t.is(roleOf.get(NODE_A.toString()), 'meshauth-node-a');
  t.is(roleOf.get(FRONTEND.toString()), 'meshauth');
});

test('a role that requires a CN refuses commonName "none" with Vault\'s text', async (t) => {
  const s = await setup(t, { vault: { commonName: 'none' } });
  const error = await errorMatching(s.sink, /common_name field is required/);
  t.is(error.kind, 'http');
});

test('commonName "none" works with a role that has require_cn=false; the SAN is then critical', async (t) => {
  const s = await setup(t, { vault: { commonName: 'none' }, server: { role: { name: 'meshauth', allowedUriSans: ['spiffe://example.org/*'], requireCn: false } } });
  const svid = await firstSvid(s.sink);
  t.is(s.server.issued[0]?.commonName, undefined);
  const leaf = new px509.X509Certificate(new Uint8Array(svid.chain[0] as Buffer));
  t.is(leaf.subject, '');
  t.true(leaf.getExtension(px509.SubjectAlternativeNameExtension)?.critical);
});

test('setWanted adds and withdraws IDs', async (t) => {
  const s = await setup(t);
  await firstSvid(s.sink);
  s.provider.setWanted([FRONTEND, BACKEND]);
  const both = await s.sink.until(() => stateWith(s.sink, [FRONTEND, BACKEND]), 'frontend and backend');
  t.is(s.server.calls.issue, 2, 'the held frontend SVID is not re-issued');
  const issuedBefore = s.server.calls.issue;
  s.provider.setWanted([BACKEND]);
  const onlyBackend = stateWith(s.sink, [BACKEND]);
  t.truthy(onlyBackend, 'withdrawing pushes a new state at once');
  t.true(onlyBackend?.get(BACKEND.toString())?.chain[0]?.equals(both.get(BACKEND.toString())?.chain[0] as Buffer));
  t.is(s.server.calls.issue, issuedBefore);
  s.provider.setWanted([]);
  t.deepEqual(s.sink.latest, []);
});

test('bundle and chain from a full ca_chain: root in the bundle, intermediate in the chain', async (t) => {
  const s = await setup(t);
  const svid = await firstSvid(s.sink);
  t.is(svid.chain.length, 2);
  t.true(svid.chain[1]?.equals(s.server.issuerDer));
  const bundle = s.sink.bundleStates.at(-1)?.get(TRUST_DOMAIN);
  t.is(bundle?.length, 1);
  t.true(bundle?.[0]?.equals(s.server.rootDer));
  t.deepEqual([...(s.sink.bundleStates.at(-1)?.keys() ?? [])], [TRUST_DOMAIN]);
  t.is(s.server.calls.ca, 0, 'no extra CA request when the answer has the chain');
});

test('bundle from an issuing-only chain: the top of the chain is the anchor', async (t) => {
  const s = await setup(t, { server: { caInIssueResponse: 'issuing-only' } });
  const svid = await firstSvid(s.sink);
  t.is(svid.chain.length, 1);
  t.true(s.sink.bundleStates.at(-1)?.get(TRUST_DOMAIN)?.[0]?.equals(s.server.issuerDer));
});

test('bundle from GET <mount>/ca_chain when the issue answer carries no CA', async (t) => {
  const s = await setup(t, { server: { caInIssueResponse: 'none' } });
  const svid = await firstSvid(s.sink);
  t.true(s.server.calls.ca >= 1);
  t.true(svid.chain[1]?.equals(s.server.issuerDer));
  t.true(s.sink.bundleStates.at(-1)?.get(TRUST_DOMAIN)?.[0]?.equals(s.server.rootDer));
});

test('HTTPS with caFile and a namespace', async (t) => {
  const s = await setup(t, { server: { tls: true, namespace: 'team-a' }, start: false });
  const caFile = join(s.dir, 'vault-ca.pem');
  await writeFile(caFile, s.server.tlsCaPem as string);
  const provider = new VaultProvider(
    vaultOptionsSchema.parse({ address: s.server.url, role: 'meshauth', caFile, namespace: 'team-a', auth: { method: 'token', tokenFile: join(s.dir, 'token') } }),
    { timing: FAST },
  );
  t.teardown(() => provider.stop());
  const sink = new TestSink();
  provider.setWanted([FRONTEND]);
  await provider.start(sink);
  await firstSvid(sink);
  t.true(s.server.namespacesSeen.length > 0 && s.server.namespacesSeen.every((namespace) => namespace === 'team-a'));
});

test('HTTPS without the caFile fails closed: the self-signed server certificate is refused', async (t) => {
  const s = await setup(t, { server: { tls: true } });
  const error = await errorMatching(s.sink, /self[- ]signed/);
  t.is(error.kind, 'unavailable');
  t.is(s.server.calls.issue, 0);
});

test('an unreadable caFile or token file is a clear error', async (t) => {
  const s = await setup(t, { start: false });
  const missing = new VaultProvider(
    vaultOptionsSchema.parse({ address: s.server.url, role: 'meshauth', caFile: join(s.dir, 'absent.pem'), auth: { method: 'token', tokenFile: join(s.dir, 'token') } }),
  );
  await t.throwsAsync(() => missing.start(new TestSink()), { message: /cannot read vault caFile .*absent\.pem: ENOENT/ });
  await missing.stop();
  await rm(join(s.dir, 'token'));
  await s.provider.start(s.sink);
  const error = await errorMatching(s.sink, /cannot read vault token file/);
  t.is(error.kind, 'io');
});

test('options: http(s) addresses only, defaults filled in', (t) => {
  const parsed = vaultOptionsSchema.parse({ address: 'https://vault.example:8200', role: 'meshauth', auth: { method: 'kubernetes', role: 'agent' } });
  t.like(parsed, { mount: 'pki', ttl: 3_600_000, commonName: 'last-segment', requestTimeout: 10_000 });
  t.like(parsed.auth, { mount: 'kubernetes', jwtFile: '/var/run/secrets/kubernetes.io/serviceaccount/token' });
  t.false(vaultOptionsSchema.safeParse({ address: 'ftp://vault.example', role: 'meshauth', auth: { method: 'token', tokenFile: '/t' } }).success);
  t.false(vaultOptionsSchema.safeParse({ address: 'https://vault.example', role: 'meshauth', auth: { method: 'token', token: 'hvs.x' } }).success);
});
