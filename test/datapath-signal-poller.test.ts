// The signal poller's fallback mode (no doorbell reader) against an in-memory queue: delivery
// order, batching, listener isolation, the async iterator, and stopping. No kernel needed.
import test from 'ava';
import { STRUCTS, type Signal } from '../src/datapath/gate/layout.js';
import { SignalPoller, type SignalQueue } from '../src/datapath/gate/signals.js';
import { sleep } from '../src/util/backoff.js';

class FakeQueue implements SignalQueue {
  readonly items: Buffer[] = [];
  pops = 0;

  push(localIdentity: number): void {
    const event = Buffer.alloc(STRUCTS.signal_event.size);
    event.writeUInt32LE(localIdentity, STRUCTS.signal_event.fields.local_identity);
    event.writeUInt32LE(7, STRUCTS.signal_event.fields.remote_identity);
    event.writeUInt8(1, STRUCTS.signal_event.fields.reason);
    this.items.push(event);
  }

  pop(out?: Buffer): Buffer | undefined {
    this.pops++;
    const item = this.items.shift();
    if (item && out) item.copy(out);
    return item && (out ?? item);
  }
}

// A bound for a broken run only: what is awaited comes in milliseconds, on a loaded machine later.
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(1);
  }
}

test('delivers queued signals in order, a few per poll, to every listener', async (t) => {
  const queue = new FakeQueue();
  const poller = new SignalPoller(queue, { maxBatch: 2 });
  t.teardown(() => poller.stop());
  for (let id = 1; id <= 5; id++) queue.push(id);
  const seen: number[][] = [[], []];
  poller.subscribe((s) => seen[0]!.push(s.localIdentity));
  poller.subscribe((s) => seen[1]!.push(s.localIdentity));
  t.is(poller.mode, 'polling');
  await until(() => seen[1]!.length === 5);
  t.deepEqual(seen, [
    [1, 2, 3, 4, 5],
    [1, 2, 3, 4, 5],
  ]);
  queue.push(6);
  await until(() => seen[0]!.length === 6);
  t.is(seen[0]![5], 6);
});

test('a throwing listener is reported and does not starve the others', async (t) => {
  const queue = new FakeQueue();
  const errors: unknown[] = [];
  const poller = new SignalPoller(queue, { onError: (err) => errors.push(err) });
  t.teardown(() => poller.stop());
  const seen: Signal[] = [];
  poller.subscribe(() => {
    throw new Error('listener bug');
  });
  poller.subscribe((s) => seen.push(s));
  queue.push(1);
  queue.push(2);
  await until(() => seen.length === 2);
  t.is(errors.length, 2);
  t.regex(String(errors[0]), /listener bug/);
});

test('the async iterator yields signals and stops polling when the last subscriber leaves', async (t) => {
  const queue = new FakeQueue();
  const poller = new SignalPoller(queue, { activeIntervalMs: 1, idleIntervalMs: 1 });
  t.teardown(() => poller.stop());
  queue.push(42);
  const signals = poller.iterate();
  const first = await signals.next();
  t.false(first.done);
  t.like(first.value, { localIdentity: 42, remoteIdentity: 7, reason: 'noEntry' });
  const pending = signals.next();
  await signals.return!();
  t.deepEqual(await pending, { value: undefined, done: true }, 'a pending next() ends too');
  const pops = queue.pops;
  await sleep(30);
  t.is(queue.pops, pops, 'no polling without subscribers');
});
