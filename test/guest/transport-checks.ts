// The transport checks, shared by the host test (wireguard-go) and the guest run (kernel
// WireGuard and kernel IPsec, test/guest/transport-scenarios.ts). Each check reports a name, a
// verdict and the numbers behind it; the ava tests assert that every expected check ran and passed.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { execa } from 'execa';
import type { TransportMetrics } from '../../src/datapath/transport/metrics.js';
import type { Logger } from '../../src/util/logger.js';
import { WireGuardTransport, type WireGuardImplementation, type WireGuardPeer } from '../../src/datapath/transport/wireguard.js';
import { WireGuardKeyPair } from '../../src/datapath/transport/keys.js';
import { IpsecTransport } from '../../src/datapath/transport/ipsec.js';
import type { IpsecPeer } from '../../src/datapath/transport/ipsec-peer.js';
import { isMeshauthReqid, parseStates } from '../../src/datapath/transport/xfrm.js';
import { inNetns } from '../../src/netns/exec.js';
import { secretForms } from '../helpers/secret-scanner.js';
import { PING_MARKER, type TransportTopology } from '../helpers/transport-topology.js';

export type Record = (check: string, ok: boolean, detail?: unknown) => void;

/** A pino logger at debug level whose output stays in memory, to be searched for keys. */
export function capturedLogger(): { logger: Logger; text: () => string } {
  const chunks: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString('utf8'));
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), text: () => chunks.join('') };
}

/** Which of the secrets appear (in any encoding) in a text. */
export function leakedIn(text: string, secrets: readonly (Buffer | string)[]): number {
  return secrets.filter((secret) => secretForms(secret).some((form) => text.includes(form))).length;
}

const UDP_MARKER = 'meshauth-udp-marker';

/** Captures on the wire and at the destination workload while `traffic` runs. */
async function wireCapture(topo: TransportTopology, wireFilter: string[]) {
  const wire = await topo.capture(topo.wire, 'br0');
  const destination = await topo.capture(topo.workload(2).netns, 'eth0');
  const replies = await sendMarkers(topo);
  const [wireBytes, destinationBytes] = await Promise.all([wire.stop(), destination.stop()]);
  const hasMarker = (pcap: Buffer) => pcap.includes(PING_MARKER) || pcap.includes(Buffer.from(UDP_MARKER));
  return {
    replies,
    wireHasMarker: hasMarker(wireBytes),
    destinationHasMarker: hasMarker(destinationBytes),
    tunnelPackets: await wire.count(wireFilter),
    plaintextOnWire: await wire.count(['icmp', 'or', 'icmp6', 'or', 'udp', 'port', '5555']),
  };
}

async function sendMarkers(topo: TransportTopology): Promise<{ v4: number; v6: number }> {
  const v4 = await topo.ping(1, 2, { count: 3, intervalS: 0.1 });
  const v6 = await topo.ping(1, 2, { count: 2, intervalS: 0.1, family: 6 });
  await topo.sendUdp(1, 2, 5555, UDP_MARKER);
  return { v4: v4.received, v6: v6.received };
}

/** Keys the WireGuard checks use, generated up front so the cmdline scanner can look for them. */
export async function wireguardSecrets(): Promise<{ stateDirs: string[]; privateKeys: string[]; psks: Buffer[]; cleanup: () => Promise<void> }> {
  const stateDirs = await Promise.all([1, 2].map((id) => mkdtemp(join(tmpdir(), `meshauth-wg-state-${id}-`))));
  const pairs = await Promise.all(stateDirs.map((dir) => WireGuardKeyPair.loadOrCreate(dir)));
  return {
    stateDirs,
    privateKeys: pairs.map((p) => p.revealPrivateKey()),
    psks: [0, 1, 2, 3].map(() => randomBytes(32)),
    cleanup: async () => {
      await Promise.all(stateDirs.map((dir) => rm(dir, { recursive: true, force: true })));
    },
  };
}

/** Every check wireguardChecks records, in order: on the host and in the guest alike. */
export const WIREGUARD_CHECKS = [
  'wg.implementation',
  'wg.forged-handshake-blocks',
  'wg.matching-psk-passes',
  'wg.wire-encrypted',
  'wg.rekey-lossless',
  'wg.new-psk-in-effect',
  'wg.remove-peer',
] as const;

/**
 * WireGuard between n1 and n2: a forged handshake (PSKs differ) passes nothing, matching PSKs
 * pass traffic that the wire shows only encrypted, a PSK change under a 100/s ping loses
 * nothing and is what a fresh WireGuard handshake then needs, and a removed peer is gone.
 */
export async function wireguardChecks(
  topo: TransportTopology,
  options: { implementation: WireGuardImplementation; secrets: Awaited<ReturnType<typeof wireguardSecrets>>; logger: Logger; record: Record; metrics?: TransportMetrics },
): Promise<void> {
  const { record, secrets } = options;
  const [psk, wrongPsk, psk2, psk3] = secrets.psks as [Buffer, Buffer, Buffer, Buffer];
  const port = 51820;
  const transports = await Promise.all(
    topo.nodes.map((node) =>
      WireGuardTransport.open({
        stateDir: secrets.stateDirs[node.id - 1]!,
        netns: node.netns,
        // wireguard-go's sockets are shared by all namespaces: the tag keeps names unique.
        interfaceName: `mwg${topo.tag}${node.id}`,
        implementation: options.implementation,
        listenPort: port,
        logger: options.logger,
        metrics: options.metrics,
      }),
    ),
  );
  const [wg1, wg2] = transports as [WireGuardTransport, WireGuardTransport];
  try {
    record('wg.implementation', transports.every((t) => t.implementation === options.implementation), transports.map((t) => t.implementation));
    const peerFor = (id: 1 | 2, presharedKey: Buffer): WireGuardPeer => ({
      nodeName: `node${id}`,
      publicKey: transports[id - 1]!.publicKey,
      endpoint: `${topo.node(id).underlay.ipv4}:${port}`,
      allowedIps: topo.node(id).podCidrs,
      presharedKey,
    });

    await wg1.setPeers([peerFor(2, psk)]);
    await wg2.setPeers([peerFor(1, wrongPsk)]);
    const forged = await topo.ping(1, 2, { count: 2, intervalS: 0.2, deadlineS: 2 });
    const forgedStatus = await wg1.peerStatus();
    record('wg.forged-handshake-blocks', forged.received === 0 && forgedStatus.every((p) => p.latestHandshake === undefined), { forged, forgedStatus });

    await wg2.upsertPeer(peerFor(1, psk));
    const first = await topo.ping(1, 2, { count: 3, intervalS: 0.1, deadlineS: 5 });
    const status = await wg1.peerStatus();
    record('wg.matching-psk-passes', first.received >= 3 && status[0]?.latestHandshake !== undefined && status[0]?.nodeName === 'node2', { first, status });

    const wire = await wireCapture(topo, ['udp', 'port', String(port)]);
    record('wg.wire-encrypted', wire.replies.v4 >= 3 && wire.replies.v6 >= 2 && !wire.wireHasMarker && wire.destinationHasMarker && wire.tunnelPackets > 0 && wire.plaintextOnWire === 0, wire);

    // A PSK change on both sides (a re-authentication) while 100 echoes per second flow.
    const loop = topo.ping(1, 2, { count: 300, intervalS: 0.01, deadlineS: 10 });
    await new Promise((resolve) => setTimeout(resolve, 500));
    await Promise.all([wg1.upsertPeer(peerFor(2, psk2)), wg2.upsertPeer(peerFor(1, psk2))]);
    const during = await loop;
    record('wg.rekey-lossless', during.transmitted === 300 && during.received === 300, during);

    // A fresh WireGuard session (n1 drops and re-adds its peer) must use the new PSK: it works
    // with psk2, which wg2 got in place, and fails with anything else.
    await wg1.removePeer('node2');
    await wg1.upsertPeer(peerFor(2, psk2));
    const fresh = await topo.ping(1, 2, { count: 2, intervalS: 0.1, deadlineS: 5 });
    await wg1.removePeer('node2');
    await wg1.upsertPeer(peerFor(2, psk3));
    const stale = await topo.ping(1, 2, { count: 2, intervalS: 0.2, deadlineS: 2 });
    record('wg.new-psk-in-effect', fresh.received >= 2 && stale.received === 0, { fresh, stale });

    const removed = await wg1.removePeer('node2');
    const { stdout: peersLeft } = await inNetns(topo.node(1).netns, 'wg', ['show', wg1.interfaceName, 'peers']);
    const { stdout: routesLeft } = await execa('ip', ['-n', topo.node(1).netns, 'route', 'show', 'dev', wg1.interfaceName]);
    const after = await topo.ping(1, 2, { count: 1, deadlineS: 1 });
    record('wg.remove-peer', removed && peersLeft.trim() === '' && routesLeft.trim() === '' && after.received === 0 && wg1.nodeNames().length === 0, {
      peersLeft,
      routesLeft,
      after,
    });
  } finally {
    await Promise.all(transports.map((t) => t.destroy()));
  }
}

/** ESP keys the IPsec checks use, generated up front for the cmdline scanner. */
export function ipsecSecrets(): Buffer[] {
  return Array.from({ length: 12 }, () => randomBytes(20));
}

async function ownStates(netns: string): Promise<{ spi: number; packets: number }[]> {
  const { stdout } = await execa('ip', ['-n', netns, '-s', 'xfrm', 'state', 'list', 'nokeys']);
  return stdout
    .split(/\n(?=src )/)
    .filter((block) => /reqid \d+\(0x6d61/.test(block))
    .map((block) => ({ spi: parseInt(/spi 0x([0-9a-f]+)/.exec(block)![1]!, 16), packets: Number(/(\d+)\(packets\)\n/.exec(block.split('lifetime current:')[1] ?? '')?.[1] ?? -1) }));
}

/**
 * Kernel IPsec between n1 and n2 (pod traffic routed over the underlay, as a CNI would): wrong
 * keys pass nothing, matching keys carry traffic the wire shows only as ESP, a make-before-break
 * re-key under a 100/s ping loses nothing and moves traffic to the new SA at once, old states
 * are retired, the hard lifetime stops an SA without falling back to plaintext, and removal
 * and uninstall clean up exactly meshauth's states.
 */
export async function ipsecChecks(topo: TransportTopology, options: { keys: Buffer[]; logger: Logger; record: Record }): Promise<void> {
  const { record } = options;
  const keys = [...options.keys];
  const nextKey = () => keys.shift() ?? randomBytes(20);
  await topo.addUnderlayRoutes();
  const [n1, n2] = topo.nodes;
  // A state meshauth did not create: it must survive removal and uninstall.
  await execa('ip', ['-n', n1.netns, '-batch', '-'], {
    input: `xfrm state add src ${n1.underlay.ipv4} dst 192.168.250.9 proto esp spi 0x4242 reqid 7 mode tunnel aead rfc4106(gcm(aes)) 0x${randomBytes(20).toString('hex')} 128\n`,
  });
  const open = () => Promise.all(topo.nodes.map((node) => IpsecTransport.open({ netns: node.netns, switchDelayMs: 300, retireAfterMs: 4000, logger: options.logger })));
  const opened = await open();
  // Replaced when the "agent" on node 1 restarts.
  let ipsec1 = opened[0]!;
  const ipsec2 = opened[1]!;

  /** New SPIs from each side and a key per direction; `tamper` gives n2 a wrong inbound key. */
  const negotiate = async (tamper = false): Promise<[IpsecPeer, IpsecPeer]> => {
    const [[spi1], [spi2]] = await Promise.all([ipsec1.allocateSpis(1), ipsec2.allocateSpis(1)]);
    const k12 = nextKey();
    const k21 = nextKey();
    const peer = (me: 1 | 2): IpsecPeer => {
      const [self, other] = me === 1 ? [n1, n2] : [n2, n1];
      return {
        nodeName: `node${other.id}`,
        localAddress: self.underlay.ipv4,
        remoteAddress: other.underlay.ipv4,
        localCidrs: self.podCidrs,
        remoteCidrs: other.podCidrs,
        inSpi: me === 1 ? spi1! : spi2!,
        outSpi: me === 1 ? spi2! : spi1!,
        inKey: me === 1 ? k21 : tamper ? nextKey() : k12,
        outKey: me === 1 ? k12 : k21,
      };
    };
    return [peer(1), peer(2)];
  };
  const program = async ([p1, p2]: [IpsecPeer, IpsecPeer]) => Promise.all([ipsec1.setPeer(p1), ipsec2.setPeer(p2)]);

  try {
    await program(await negotiate(true));
    const forged = await topo.ping(1, 2, { count: 2, intervalS: 0.2, deadlineS: 2 });
    record('ipsec.wrong-key-blocks', forged.received === 0, forged);

    const current = await negotiate();
    await program(current);
    const wire = await wireCapture(topo, ['esp']);
    record('ipsec.wire-encrypted', wire.replies.v4 >= 3 && wire.replies.v6 >= 2 && !wire.wireHasMarker && wire.destinationHasMarker && wire.tunnelPackets > 0 && wire.plaintextOnWire === 0, wire);

    const loop = topo.ping(1, 2, { count: 400, intervalS: 0.01, deadlineS: 12 });
    await new Promise((resolve) => setTimeout(resolve, 500));
    const next = await negotiate();
    await program(next);
    const during = await loop;
    // After the switch, traffic of its own (the loop may have ended already on a slow machine):
    // the new outbound SA carries it, the old one (still installed until it is retired) does not.
    const switched = await ownStates(n1.netns);
    await topo.ping(1, 2, { count: 3, intervalS: 0.05, deadlineS: 5 });
    const later = await ownStates(n1.netns);
    record('ipsec.rekey-lossless', during.transmitted === 400 && during.received === 400, during);
    const packets = (states: { spi: number; packets: number }[], spi: number) => states.find((s) => s.spi === spi)?.packets ?? -1;
    const [newOut, oldOut] = [next[0].outSpi, current[0].outSpi];
    record(
      'ipsec.rekey-switches-to-new-sa',
      // The old SA may be retired (gone: -1) by then on a slow machine; it must not have grown.
      packets(switched, newOut) >= 0 && packets(later, newOut) > packets(switched, newOut) && (packets(later, oldOut) === packets(switched, oldOut) || packets(later, oldOut) === -1),
      { switched, later, newOut, oldOut },
    );
    await Promise.all([ipsec1.idle(), ipsec2.idle()]);
    const retired = await ownStates(n1.netns);
    record('ipsec.old-states-retired', retired.length === 2 && retired.every((s) => s.spi === next[0].inSpi || s.spi === next[0].outSpi), retired);

    // Refused before anything reaches the kernel: an inbound SPI this side did not allocate, a
    // second node claiming part of node2's pod CIDRs or its address, a re-key reusing an SPI.
    const [spare] = await ipsec1.allocateSpis(1);
    const installed = next[0];
    const node3 = { ...installed, nodeName: 'node3', remoteAddress: '192.168.250.3', remoteCidrs: ['10.3.0.0/16'], inSpi: spare! };
    const refusals = await Promise.allSettled([
      ipsec1.setPeer({ ...installed, inSpi: 0x7777_7777 }),
      ipsec1.setPeer({ ...node3, remoteCidrs: ['10.2.7.0/24'] }),
      ipsec1.setPeer({ ...node3, remoteAddress: installed.remoteAddress }),
      ipsec1.setPeer({ ...installed, inSpi: spare!, inKey: nextKey() }),
    ]);
    const reasons = refusals.map((r) => (r.status === 'rejected' ? (r.reason as Error).message : 'accepted'));
    const expected = [/was not allocated/, /10\.2\.7\.0\/24 of node3 overlaps 10\.2\.0\.0\/16 of node2/, /same address/, /needs new SPIs in both directions/];
    const stillUp = await topo.ping(1, 2, { count: 2, intervalS: 0.1 });
    record('ipsec.refuses-conflicts', reasons.every((reason, i) => expected[i]!.test(reason)) && stillUp.received >= 2 && ipsec1.nodeNames().join() === 'node2', {
      reasons,
      stillUp,
    });

    // The agent restarts: the SAs keep carrying traffic without it, and the next handshake's keys
    // replace them make-before-break (the new process adopts the previous run's reqid).
    await ipsec1.close();
    const unattended = await topo.ping(1, 2, { count: 2, intervalS: 0.1 });
    ipsec1 = await IpsecTransport.open({ netns: n1.netns, switchDelayMs: 300, retireAfterMs: 4000, logger: options.logger });
    const restartLoop = topo.ping(1, 2, { count: 200, intervalS: 0.01, deadlineS: 10 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    const afterRestart = await negotiate();
    await program(afterRestart);
    const restartTraffic = await restartLoop;
    await Promise.all([ipsec1.idle(), ipsec2.idle()]);
    const adoptedStates = await ownStates(n1.netns);
    record(
      'ipsec.restart-adopts',
      unattended.received >= 2 && restartTraffic.transmitted === 200 && restartTraffic.received === 200 && adoptedStates.length === 2 && adoptedStates.some((s) => s.spi === afterRestart[0].outSpi),
      { unattended, restartTraffic, adoptedStates },
    );

    const removed = await ipsec1.removePeer('node2');
    const { stdout: policies1 } = await execa('ip', ['-n', n1.netns, 'xfrm', 'policy', 'list']);
    const { stdout: states1 } = await execa('ip', ['-n', n1.netns, 'xfrm', 'state', 'list', 'nokeys']);
    const meshauthStates = parseStates(states1).filter((state) => isMeshauthReqid(state.reqid));
    record('ipsec.remove-cleans-up', removed && policies1.trim() === '' && meshauthStates.length === 0 && /spi 0x00004242/.test(states1), { policies1, states1 });

    const uninstalled = await ipsec2.uninstall();
    const { stdout: left2 } = await execa('ip', ['-n', n2.netns, 'xfrm', 'state', 'list', 'nokeys']);
    const { stdout: policies2 } = await execa('ip', ['-n', n2.netns, 'xfrm', 'policy', 'list']);
    record('ipsec.uninstall', uninstalled.states === 2 && uninstalled.policies === 6 && left2.trim() === '' && policies2.trim() === '', { uninstalled, left2, policies2 });
  } finally {
    await Promise.allSettled([ipsec1.close(), ipsec2.close()]);
  }

  // The safety net: an SA that reaches its hard packet limit expires, and the policy then drops
  // traffic instead of letting it out in plaintext.
  const limited = await Promise.all(
    topo.nodes.map((node) => IpsecTransport.open({ netns: node.netns, lifetime: { softPackets: 5, hardPackets: 10 }, logger: options.logger })),
  );
  try {
    const [[spi1], [spi2]] = await Promise.all([limited[0]!.allocateSpis(1), limited[1]!.allocateSpis(1)]);
    const k12 = nextKey();
    const k21 = nextKey();
    await limited[0]!.setPeer({ nodeName: 'node2', localAddress: n1.underlay.ipv4, remoteAddress: n2.underlay.ipv4, localCidrs: n1.podCidrs, remoteCidrs: n2.podCidrs, inSpi: spi1!, outSpi: spi2!, inKey: k21, outKey: k12 });
    await limited[1]!.setPeer({ nodeName: 'node1', localAddress: n2.underlay.ipv4, remoteAddress: n1.underlay.ipv4, localCidrs: n2.podCidrs, remoteCidrs: n1.podCidrs, inSpi: spi2!, outSpi: spi1!, inKey: k12, outKey: k21 });
    const wire = await topo.capture(topo.wire, 'br0');
    const pinged = await topo.ping(1, 2, { count: 20, intervalS: 0.05, deadlineS: 3 });
    await wire.stop();
    const plaintext = await wire.count(['icmp']);
    const esp = await wire.count(['esp']);
    record('ipsec.hard-lifetime-fails-closed', pinged.received > 0 && pinged.received <= 10 && plaintext === 0 && esp <= 20, { pinged, plaintext, esp });
  } finally {
    await IpsecTransport.uninstallAll({ netns: n1.netns });
    await IpsecTransport.uninstallAll({ netns: n2.netns });
    await Promise.allSettled(limited.map((t) => t.close()));
  }
}
