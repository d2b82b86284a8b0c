// The demo's pure helpers: where a datagram stream was cut, Prometheus sample sums, and which
// Node flags child processes inherit.
import test from 'ava';
import { metricSum } from '../src/demo/agent-process.js';
import { lostBetween, trafficCut } from '../src/demo/measure.js';
import { inheritedNodeFlags } from '../src/demo/self.js';

const ms = (value: number) => BigInt(Math.round(value * 1e6));
/** Datagram i sent at (i * 2 - 10) ms relative to the reference 0. */
const sent: [number, bigint][] = Array.from({ length: 20 }, (_, i) => [i, ms(i * 2 - 10)]);

test('trafficCut finds the first datagram of the final lost run, relative to the reference', (t) => {
  // 0-6 arrive, 7 is lost, 8 arrives, 9-19 are lost: the cut is at 9 (sent at +8 ms), not at 7.
  const arrived = new Set([0, 1, 2, 3, 4, 5, 6, 8]);
  const cut = trafficCut(sent, arrived, 0n);
  t.is(cut.sent, 20);
  t.is(cut.received, 8);
  t.is(cut.cutMs, 8);
  t.is(cut.lastPassedMs, 6);
});

test('trafficCut reports no cut when the last datagram arrived, and accepts datagrams out of order', (t) => {
  const shuffled = [...sent].reverse();
  const cut = trafficCut(shuffled, new Map(sent.map(([seq]) => [seq, 0n])), ms(5));
  t.is(cut.cutMs, undefined);
  t.is(cut.received, 20);
  t.is(cut.lastPassedMs, 28 - 5);
});

test('trafficCut of a stream that never arrived starts the cut at the first datagram', (t) => {
  const cut = trafficCut(sent, new Set(), 0n);
  t.is(cut.received, 0);
  t.is(cut.lastPassedMs, undefined);
  t.is(cut.cutMs, -10);
});

test('lostBetween counts the datagrams sent in a window that did not arrive', (t) => {
  const arrived = new Set([0, 1, 2, 3, 4, 5, 6, 8]);
  // Sent in [0, 10) ms: 5, 6, 7, 8, 9; of those 7 and 9 were lost.
  t.deepEqual(lostBetween(sent, arrived, ms(0), ms(10)), { sent: 5, lost: 2 });
  t.deepEqual(lostBetween(sent, arrived, ms(-100), ms(-10)), { sent: 0, lost: 0 });
});

test('metricSum adds the samples whose labels include the given ones', (t) => {
  const text = [
    '# HELP meshauth_handshakes_total Handshake attempts',
    '# TYPE meshauth_handshakes_total counter',
    'meshauth_handshakes_total{kind="pair",role="initiator",result="success",reason="ok"} 3',
    'meshauth_handshakes_total{kind="pair",role="responder",result="success",reason="ok"} 4',
    'meshauth_handshakes_total{kind="node",role="initiator",result="success",reason="ok"} 1',
    'meshauth_handshakes_total_other{kind="pair"} 100',
    'meshauth_auth_pairs{state="authenticated"} 2',
    'meshauth_up 1',
  ].join('\n');
  t.is(metricSum(text, 'meshauth_handshakes_total', { kind: 'pair', result: 'success' }), 7);
  t.is(metricSum(text, 'meshauth_handshakes_total', { kind: 'pair', role: 'responder' }), 4);
  t.is(metricSum(text, 'meshauth_handshakes_total'), 8);
  t.is(metricSum(text, 'meshauth_up'), 1);
  t.is(metricSum(text, 'meshauth_auth_pairs', { state: 'failed' }), 0);
  t.is(metricSum(text, 'meshauth_missing'), 0);
});

test('children inherit loader flags but not an --eval script or a debugger port', (t) => {
  const saved = process.execArgv;
  try {
    Object.defineProperty(process, 'execArgv', { value: ['--import', 'tsx', '-e', 'console.log(1)', '--inspect=9229', '--max-old-space-size=512', '--eval=x'], configurable: true });
    t.deepEqual(inheritedNodeFlags(), ['--import', 'tsx', '--max-old-space-size=512']);
  } finally {
    Object.defineProperty(process, 'execArgv', { value: saved, configurable: true });
  }
});
