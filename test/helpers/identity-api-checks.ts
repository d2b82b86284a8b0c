// The checks both SPIFFE identity API providers (Workload API, SPIRE Delegated Identity API) must
// pass when their server fails them:
// - UNAVAILABLE: the last SVIDs stay, reconnects back off (a handful, not hundreds), the error is
//   reported, and the state comes back on recovery;
// - PERMISSION_DENIED: every SVID and bundle is withdrawn at once, the provider keeps retrying,
//   and the state comes back on recovery;
// - a status never to retry (INVALID_ARGUMENT, UNIMPLEMENTED): every stream reports it, and no
//   call follows.
import type { ExecutionContext } from 'ava';
import * as grpc from '@grpc/grpc-js';
import { sleep } from '../../src/util/backoff.js';
import type { IdentityApiServer } from '../servers/identity-api-server.js';
import { bundleDomainsAre, idsAre, type RecordingSink } from './recording-sink.js';

export async function unavailableKeepsStateAndBacksOff<Method extends string>(
  t: ExecutionContext,
  { server, sink, method, expectedIds }: { server: IdentityApiServer<Method, { method: Method }>; sink: RecordingSink; method: Method; expectedIds: string[] },
): Promise<void> {
  const statesBefore = sink.svidStates.length;
  const callsBefore = server.callCount(method);
  server.fail(grpc.status.UNAVAILABLE, 'agent is restarting');
  const failedAt = performance.now();
  // It keeps retrying: awaited (a loaded machine may fit fewer attempts in a fixed window), then
  // counted over the time that actually passed.
  const retried = () => server.callCount(method) - callsBefore;
  for (const deadline = Date.now() + 10_000; retried() < 2 && Date.now() < deadline; ) await sleep(20);
  await sleep(600);
  const retries = retried();
  const elapsed = performance.now() - failedAt;
  // Immediate reconnect, then 40, 80, 160, 200, 200 ms: a handful, not hundreds. The bound, the
  // ramp and one per 100 ms, is twice that rate and far below a client that spins.
  t.true(retries >= 2 && retries <= 5 + elapsed / 100, `${retries} retries in ${Math.round(elapsed)} ms`);
  t.is(sink.svidStates.length, statesBefore, 'Unavailable must not withdraw SVIDs');
  t.true(sink.errorKinds().includes('unavailable'));
  server.recover();
  await sink.until(() => (sink.svidStates.length > statesBefore ? true : undefined), 'a state after recovery');
  t.deepEqual(sink.latestIds(), expectedIds);
}

/** `streams`: how many streams of `method` the provider holds open (each must retry twice). */
export async function permissionDeniedWithdrawsAndRecovers<Method extends string>(
  t: ExecutionContext,
  options: { server: IdentityApiServer<Method, { method: Method }>; sink: RecordingSink; method: Method; streams: number; message: string; expectedIds: string[]; expectedDomains: string[] },
): Promise<void> {
  const { server, sink, method, expectedIds, expectedDomains } = options;
  await sink.until(idsAre(sink, expectedIds), 'the first state');
  await sink.until(bundleDomainsAre(sink, expectedDomains), 'the first bundles');
  const callsBefore = server.callCount(method);
  server.fail(grpc.status.PERMISSION_DENIED, options.message);
  await sink.until(idsAre(sink, []), 'an empty SVID state');
  await sink.until(bundleDomainsAre(sink, []), 'an empty bundle state');
  t.true(sink.errorKinds().includes('permission_denied'));
  await sink.until(() => (server.callCount(method) >= callsBefore + 2 * options.streams ? true : undefined), 'retries of every stream');
  server.recover();
  await sink.until(idsAre(sink, expectedIds), 'the SVIDs back after recovery');
  await sink.until(bundleDomainsAre(sink, expectedDomains), 'the bundles back after recovery');
}

/** A status the provider must not retry: each of its `streams` streams reports it as `kind`, and
 *  once the server has recovered no call follows. */
export async function reportedAndNeverRetried<Method extends string>(
  t: ExecutionContext,
  options: { server: IdentityApiServer<Method, { method: Method }>; sink: RecordingSink; status: grpc.status; message: string; kind: string; streams: number },
): Promise<void> {
  const { server, sink, kind, streams } = options;
  server.fail(options.status, options.message);
  await sink.until(() => (sink.errorKinds().filter((reported) => reported === kind).length === streams ? true : undefined), `all ${streams} streams reporting`);
  const calls = server.calls.length;
  server.recover();
  await sleep(500);
  t.is(server.calls.length, calls, `the provider called again after ${kind}`);
}
