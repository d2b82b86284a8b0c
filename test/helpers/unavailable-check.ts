// The check both SPIFFE identity API providers (Workload API, SPIRE Delegated Identity API) must
// pass when their server answers UNAVAILABLE: the last SVIDs stay, reconnects back off (a
// handful, not hundreds), the error is reported, and the state comes back on recovery.
import type { ExecutionContext } from 'ava';
import * as grpc from '@grpc/grpc-js';
import type { IdentityApiServer } from '../servers/identity-api-server.js';
import type { RecordingSink } from './recording-sink.js';

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

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
  for (const deadline = Date.now() + 10_000; retried() < 2 && Date.now() < deadline; ) await delay(20);
  await delay(600);
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
