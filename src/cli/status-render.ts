// Turns an AgentStatus into the text `meshauth status` prints: a summary line, then one aligned
// table per section. Pure (the time is a parameter), so tests can pin every line.
import type { AgentStatus, DatapathStatus } from '../control/status.js';

export function renderStatus(status: AgentStatus, now: Date): string {
  const lines: string[] = [];
  lines.push(
    `Node ${status.nodeName} (${status.nodeId})  provider ${status.provider}  ` +
      `${status.ready ? 'ready' : 'NOT READY'}  up ${duration(now.getTime() - Date.parse(status.startedAt))}`,
  );

  section(lines, `Identities (${status.identities.length})`, [
    ['SPIFFE ID', 'KIND', 'SVID EXPIRES', 'SERIAL'],
    ...status.identities.map((identity) => [
      identity.spiffeId,
      identity.node ? 'node' : 'workload',
      expiry(identity.notAfter, now),
      identity.serial,
    ]),
  ]);

  const authenticated = status.pairs.filter((pair) => pair.state === 'authenticated').length;
  section(lines, `Pairs (${status.pairs.length}, ${authenticated} authenticated)`, [
    ['LOCAL', 'REMOTE', 'REMOTE NODE', 'STATE', 'EXPIRES', 'LAST AUTHENTICATED', 'TRIGGER', 'LAST ERROR'],
    ...status.pairs.map((pair) => [
      pair.localId,
      pair.remoteId,
      pair.remoteNode,
      pair.state,
      expiry(pair.expiresAt, now),
      time(pair.lastAuthenticatedAt, now),
      pair.trigger ?? '-',
      pair.lastError ?? '-',
    ]),
  ]);

  section(lines, `Peers (${status.peers.length})`, [
    ['NODE', 'ADDRESS', 'TRANSPORT', 'STATE', 'EPOCH', 'LAST AUTHENTICATED', 'EXPIRES', 'LAST ERROR'],
    ...status.peers.map((peer) => [
      peer.node,
      peer.address,
      peer.transport,
      peer.state,
      String(peer.epoch),
      time(peer.lastAuthenticatedAt, now),
      expiry(peer.expiresAt, now),
      peer.lastError ?? '-',
    ]),
  ]);

  lines.push('');
  if (status.datapath) {
    const { authEntries, authCapacity, counters } = status.datapath;
    const percent = authCapacity > 0 ? ` (${((authEntries / authCapacity) * 100).toFixed(1)} %)` : '';
    lines.push(`Datapath: auth map ${authEntries} of ${authCapacity} entries${percent}`);
    lines.push(`Other nodes' packets: ${ARRIVAL[status.datapath.remoteArrival]}`);
    lines.push(...table([['COUNTER', 'VALUE'], ...Object.entries(counters).map(([name, value]) => [name, value])], [1]));
  } else {
    lines.push('Datapath: not attached');
  }
  return `${lines.join('\n')}\n`;
}

const ARRIVAL: Record<DatapathStatus['remoteArrival'], string> = {
  wireguard: 'checked on arrival (decrypted on the WireGuard device)',
  ipsec: "checked on arrival (decrypted by meshauth's IPsec SAs)",
  unchecked: "NOT checked on arrival (transport none: identities only as good as the CNI's anti-spoofing)",
};

/** A title, then the table (header row first), or "(none)" when there are no rows under the header. */
function section(lines: string[], title: string, rows: string[][]): void {
  lines.push('', title);
  if (rows.length <= 1) lines.push('  (none)');
  else lines.push(...table(rows));
}

/** Columns padded to their widest cell (right-aligned where asked); no trailing spaces. */
function table(rows: string[][], rightAligned: number[] = []): string[] {
  const cells = rows.map((row) => row.map(printable));
  const widths: number[] = [];
  for (const row of cells) row.forEach((cell, index) => (widths[index] = Math.max(widths[index] ?? 0, cell.length)));
  return cells.map((row) =>
    `  ${row
      .map((cell, index) => {
        const width = widths[index] ?? 0;
        return rightAligned.includes(index) ? cell.padStart(width) : cell.padEnd(width);
      })
      .join('  ')}`.trimEnd(),
  );
}

/** The status comes from another process: control characters (terminal escapes) are not printed. */
function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}

/** A time as itself and relative to now: "2030-01-01 00:00:00Z (3h 5m ago)"; an expiry in the
 *  past reads "(expired 3h 5m ago)". */
function time(iso: string | undefined, now: Date, isExpiry = false): string {
  if (iso === undefined) return '-';
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return iso;
  const delta = at - now.getTime();
  const when = new Date(at).toISOString().replace('T', ' ').replace(/\.\d{3}Z$/, 'Z');
  const relative = delta > 0 ? `in ${duration(delta)}` : `${isExpiry ? 'expired ' : ''}${duration(-delta)} ago`;
  return `${when} (${relative})`;
}

function expiry(iso: string | undefined, now: Date): string {
  return time(iso, now, true);
}

/** A duration in its two largest units: "45s", "3m 20s", "2h 5m", "4d 3h". */
function duration(ms: number): string {
  if (Number.isNaN(ms)) return '?';
  const seconds = Math.floor(Math.max(ms, 0) / 1000);
  const units: [string, number][] = [
    ['d', 86_400],
    ['h', 3_600],
    ['m', 60],
    ['s', 1],
  ];
  const first = units.findIndex(([, size]) => seconds >= size);
  if (first === -1) return '0s';
  const [bigName, bigSize] = units[first]!;
  const parts = [`${Math.floor(seconds / bigSize)}${bigName}`];
  const next = units[first + 1];
  if (next) {
    const rest = Math.floor((seconds % bigSize) / next[1]);
    if (rest > 0) parts.push(`${rest}${next[0]}`);
  }
  return parts.join(' ');
}
