import test from 'ava';
import { renderStatus } from '../src/cli/status-render.js';
import { NOW, sampleStatus } from './helpers/sample-status.js';

/** The rendered line that contains every fragment, split into its cells (two or more spaces apart). */
function row(text: string, ...fragments: string[]): string[] {
  const line = text.split('\n').find((candidate) => fragments.every((fragment) => candidate.includes(fragment)));
  if (line === undefined) throw new Error(`no line contains ${fragments.join(' + ')} in:\n${text}`);
  return line.trim().split(/ {2,}/);
}

test('the summary line names the node, provider, readiness and uptime', (t) => {
  const text = renderStatus(sampleStatus(), NOW);
  const first = text.split('\n')[0]!;
  t.regex(first, /node-a/);
  t.regex(first, /spiffe:\/\/cluster\.local\/meshauth\/node\/node-a/);
  t.regex(first, /provider dev/);
  t.regex(first, /\bready\b/);
  t.regex(first, /up 2h 5m/);
  t.regex(renderStatus({ ...sampleStatus(), ready: false }, NOW).split('\n')[0]!, /NOT READY/);
});

test('identities show kind, absolute and relative SVID expiry, and serial', (t) => {
  const text = renderStatus(sampleStatus(), NOW);
  t.regex(text, /^Identities \(2\)$/m);
  t.deepEqual(row(text, '0a1b2c'), [
    'spiffe://cluster.local/meshauth/node/node-a',
    'node',
    '2030-06-01 12:45:00Z (in 45m)',
    '0a1b2c',
  ]);
  t.deepEqual(row(text, 'sa/web', '3d4e5f'), ['spiffe://cluster.local/ns/prod/sa/web', 'workload', '2030-06-01 11:57:00Z (expired 3m ago)', '3d4e5f']);
});

test('pairs show state, expiry, last authentication, trigger and error, with "-" for what is absent', (t) => {
  const text = renderStatus(sampleStatus(), NOW);
  t.regex(text, /^Pairs \(3, 1 authenticated\)$/m);
  t.deepEqual(row(text, 'sa/db'), [
    'spiffe://cluster.local/ns/prod/sa/web',
    'spiffe://cluster.local/ns/prod/sa/db',
    'node-b',
    'authenticated',
    '2030-06-01 12:30:00Z (in 30m)',
    '2030-06-01 11:58:30Z (1m 30s ago)',
    'proactive',
    '-',
  ]);
  t.deepEqual(row(text, 'sa/cache').slice(2), ['node-c', 'pending', '-', '-', '-', '-']);
  t.deepEqual(row(text, 'other.org').slice(3), ['failed', '-', '-', 'on-demand', 'untrusted-peer']);
});

test('peers show transport, state, epoch and times', (t) => {
  const text = renderStatus(sampleStatus(), NOW);
  t.regex(text, /^Peers \(2\)$/m);
  t.deepEqual(row(text, '10.0.0.2'), ['node-b', '10.0.0.2', 'wireguard', 'up', '7', '2030-06-01 11:55:00Z (5m ago)', '2030-06-01 12:55:00Z (in 55m)', '-']);
  t.deepEqual(row(text, 'fd00::3'), ['node-c', 'fd00::3', 'ipsec', 'failed', '0', '-', '-', 'connect-timeout']);
});

test('datapath: map fill and every counter, u64 values printed exactly', (t) => {
  const text = renderStatus(sampleStatus(), NOW);
  t.regex(text, /auth map 1 of 524288 entries \(0\.0 %\)/);
  t.deepEqual(row(text, 'allowed'), ['allowed', '18446744073709551615']);
  t.deepEqual(row(text, 'droppedNoEntry'), ['droppedNoEntry', '42']);
  t.deepEqual(row(text, 'signalsSent'), ['signalsSent', '3']);
  const { datapath: _omitted, ...withoutDatapath } = sampleStatus();
  t.regex(renderStatus(withoutDatapath, NOW), /Datapath: not attached/);
  t.regex(renderStatus(sampleStatus(), NOW), /Other nodes' packets: NOT checked on arrival \(transport none/);
});

test('columns line up: every row of a table starts its cells at the same offsets', (t) => {
  const lines = renderStatus(sampleStatus(), NOW).split('\n');
  const header = lines.find((line) => line.includes('NODE') && line.includes('TRANSPORT'))!;
  const rows = lines.filter((line) => line.includes('wireguard') || line.includes('ipsec'));
  t.is(rows.length, 2);
  for (const column of ['TRANSPORT', 'STATE', 'EPOCH']) {
    const offset = header.indexOf(column);
    for (const line of rows) {
      t.is(line[offset - 1], ' ', `${column} starts at ${offset} in "${line}"`);
      t.not(line[offset], ' ', `${column} starts at ${offset} in "${line}"`);
    }
  }
  t.false(lines.some((line) => line.endsWith(' ')), 'no trailing spaces');
});

test('empty sections say so', (t) => {
  const text = renderStatus({ ...sampleStatus(), identities: [], pairs: [], peers: [] }, NOW);
  t.regex(text, /Identities \(0\)\n {2}\(none\)/);
  t.regex(text, /Pairs \(0, 0 authenticated\)\n {2}\(none\)/);
  t.regex(text, /Peers \(0\)\n {2}\(none\)/);
});

test('control characters from the agent are not passed to the terminal', (t) => {
  const status = sampleStatus();
  status.pairs[2]!.lastError = 'bad\u001b[2Jthing\r\n';
  const text = renderStatus(status, NOW);
  t.false(text.includes('\u001b'));
  t.true(text.includes('bad?[2Jthing??'));
});

test('relative times use the two largest units', (t) => {
  const status = sampleStatus();
  const cases: [number, string][] = [
    [500, 'in 0s'],
    [45_000, 'in 45s'],
    [3 * 86_400_000 + 4 * 3_600_000 + 59_000, 'in 3d 4h'],
    [3_600_000, 'in 1h)'],
  ];
  for (const [offset, expected] of cases) {
    status.identities[0]!.notAfter = new Date(NOW.getTime() + offset).toISOString();
    t.true(renderStatus(status, NOW).includes(expected), expected);
  }
});
