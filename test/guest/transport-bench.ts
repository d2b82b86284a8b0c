// Runs as root inside the run-in-guest VM for bench/transport.ts (kernel IPsec exists only
// there): the time to program 100 IPsec node pairs in one setPeers (200 states, 300 policies),
// cold and again, to re-key all of them, and iperf3 throughput over an IPsec tunnel vs the plain veth underlay.
// Everything here runs under qemu's software emulation: absolute numbers are pessimistic.
// Prints one JSON object on the last line.
import { randomBytes, randomInt } from 'node:crypto';
import { IpsecTransport } from '../../src/datapath/transport/ipsec.js';
import type { IpsecPeer } from '../../src/datapath/transport/ipsec-peer.js';
import { TransportTopology } from '../helpers/transport-topology.js';

const PEERS = 100;
const result: Record<string, unknown> = { peers: PEERS, emulated: true };
const progress = (step: string) => console.error(`transport-bench: ${step}`);
const topology = await TransportTopology.create();
try {
  const [n1, n2] = topology.nodes;
  // No re-key delays: this measures programming, not the make-before-break waiting.
  const ipsec = await IpsecTransport.open({ netns: n1.netns, switchDelayMs: 0, retireAfterMs: 0 });
  const peersWith = async (): Promise<IpsecPeer[]> => {
    const spis = await ipsec.allocateSpis(PEERS);
    return spis.map((inSpi, i) => ({
      nodeName: `bench-node-${i}`,
      localAddress: n1.underlay.ipv4,
      remoteAddress: `172.16.${i >> 8}.${(i & 0xff) + 1}`,
      localCidrs: n1.podCidrs,
      remoteCidrs: [`10.${100 + i}.0.0/16`],
      inSpi,
      outSpi: randomInt(256, 0x1_0000_0000),
      inKey: randomBytes(20),
      outKey: randomBytes(20),
    }));
  };
  // The first run pays for the kernel's one-time instantiation (and self-test) of
  // rfc4106(gcm(aes)); the second shows the steady state.
  let started = performance.now();
  await ipsec.setPeers(await peersWith());
  result.ipsec_program_100_cold_ms = Math.round(performance.now() - started);
  await ipsec.setPeers([]);
  const first = await peersWith();
  started = performance.now();
  await ipsec.setPeers(first);
  result.ipsec_program_100_ms = Math.round(performance.now() - started);
  progress(`programmed ${PEERS} peers in ${String(result.ipsec_program_100_cold_ms)} ms (cold), ${String(result.ipsec_program_100_ms)} ms`);
  const second = await peersWith();
  started = performance.now();
  await ipsec.setPeers(second);
  result.ipsec_rekey_100_ms = Math.round(performance.now() - started);
  await ipsec.idle();
  result.ipsec_uninstall = await ipsec.uninstall();
  progress('re-keyed and uninstalled');

  await topology.addUnderlayRoutes();
  result.guest_veth_mbps = await topology.iperf(1, 2, 2);
  progress('measured veth');
  const pair = await Promise.all(topology.nodes.map((node) => IpsecTransport.open({ netns: node.netns })));
  const [spi1] = await pair[0]!.allocateSpis(1);
  const [spi2] = await pair[1]!.allocateSpis(1);
  const k12 = randomBytes(20);
  const k21 = randomBytes(20);
  await pair[0]!.setPeer({ nodeName: 'node2', localAddress: n1.underlay.ipv4, remoteAddress: n2.underlay.ipv4, localCidrs: n1.podCidrs, remoteCidrs: n2.podCidrs, inSpi: spi1!, outSpi: spi2!, inKey: k21, outKey: k12 });
  await pair[1]!.setPeer({ nodeName: 'node1', localAddress: n2.underlay.ipv4, remoteAddress: n1.underlay.ipv4, localCidrs: n2.podCidrs, remoteCidrs: n1.podCidrs, inSpi: spi2!, outSpi: spi1!, inKey: k12, outKey: k21 });
  result.guest_ipsec_mbps = await topology.iperf(1, 2, 2);
  await Promise.all(pair.map((t) => t.uninstall()));
} catch (err) {
  result.error = (err as Error).message;
} finally {
  await topology.cleanup();
}
console.log(JSON.stringify(result));
