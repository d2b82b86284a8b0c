import test from 'ava';
import { ReauthScheduler, followerTiming } from '../src/auth/scheduler.js';

test('due times fall inside the jitter window around the fraction of the lifetime', (t) => {
  const scheduler = new ReauthScheduler<string>(() => {});
  for (let i = 0; i < 1000; i++) {
    const due = scheduler.dueTime(0, 3_600_000, { fraction: 2 / 3, jitter: 0.2 });
    t.true(due >= 3_600_000 * (2 / 3 - 0.1) && due <= 3_600_000 * (2 / 3 + 0.1));
  }
});

test('10,000 pairs authenticated at once re-authenticate evenly: peak second at most twice the mean', (t) => {
  const scheduler = new ReauthScheduler<string>(() => {});
  const perSecond = new Map<number, number>();
  for (let i = 0; i < 10_000; i++) {
    const second = Math.floor(scheduler.dueTime(0, 3_600_000, { fraction: 2 / 3, jitter: 0.2 }) / 1000);
    perSecond.set(second, (perSecond.get(second) ?? 0) + 1);
  }
  const windowSeconds = 3_600 * 0.2;
  const mean = 10_000 / windowSeconds;
  const peak = Math.max(...perSecond.values());
  t.true(peak / mean <= 2, `peak ${peak} vs mean ${mean.toFixed(1)}`);
});

test('keys fire in due order; rescheduling replaces; cancel prevents firing', async (t) => {
  const fired: string[] = [];
  const scheduler = new ReauthScheduler<string>((key) => fired.push(key));
  const now = Date.now();
  scheduler.schedule('c', now + 60);
  scheduler.schedule('a', now + 20);
  scheduler.schedule('b', now + 40);
  scheduler.schedule('d', now + 30);
  scheduler.schedule('d', now + 80); // moved later
  scheduler.schedule('e', now + 10);
  scheduler.cancel('e');
  await new Promise((resolve) => setTimeout(resolve, 150));
  t.deepEqual(fired, ['a', 'b', 'c', 'd']);
  t.is(scheduler.size, 0);
  scheduler.stop();
});

test('a key scheduled earlier than the armed timer still fires on time', async (t) => {
  const fired: number[] = [];
  const scheduler = new ReauthScheduler<string>(() => fired.push(Date.now()));
  const start = Date.now();
  scheduler.schedule('late', start + 10_000);
  scheduler.schedule('soon', start + 20);
  // The scheduler's timer for 'soon' was set before this one, so it fires first however late a
  // loaded machine fires both: fired by now means re-armed for 'soon', not left on the 10 s key.
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(fired.length, 1);
  t.true(fired[0]! >= start + 20, 'not before it was due');
  scheduler.stop();
});

test('many reschedules do not grow the heap without bound', (t) => {
  const scheduler = new ReauthScheduler<string>(() => {});
  const later = Date.now() + 3_600_000;
  for (let round = 0; round < 20; round++) for (let i = 0; i < 1000; i++) scheduler.schedule(`k${i}`, later + round);
  t.is(scheduler.size, 1000);
  t.true((scheduler as unknown as { heap: unknown[] }).heap.length <= 2 * 1000 + 1024 + 1);
  scheduler.stop();
});

test('the follower re-authenticates only after the leader\'s whole window', (t) => {
  const leader = { fraction: 2 / 3, jitter: 0.2 };
  const follower = followerTiming(leader);
  const scheduler = new ReauthScheduler<string>(() => {});
  let latestLeader = 0;
  let earliestFollower = Number.POSITIVE_INFINITY;
  for (let i = 0; i < 1000; i++) {
    latestLeader = Math.max(latestLeader, scheduler.dueTime(0, 1000, leader));
    earliestFollower = Math.min(earliestFollower, scheduler.dueTime(0, 1000, follower));
  }
  t.true(earliestFollower > latestLeader, `follower from ${earliestFollower}, leader until ${latestLeader}`);
  t.true(follower.fraction + follower.jitter / 2 < 1, 'and before the expiry');
});
