// The parsers the guest's IPsec checks (test/guest/agent-ipsec.ts) read the kernel's
// configuration with, tested on the host on output captured from the guest's iproute2.
import test from 'ava';
import { parseXfrmEvents, parseXfrmPolicies, parseXfrmStates } from './helpers/xfrm-observer.js';

// Captured from `ip -s xfrm state list` / `ip xfrm policy list` / `ip xfrm monitor nokeys`
// (iproute2 6.1) in the guest.
const STATES_WITH_STATS = `src 192.168.79.2 dst 192.168.79.1
\tproto esp spi 0x5aba1dcd(1522146765) reqid 1835073537(0x6d610001) mode tunnel
\treplay-window 0 seq 0x00000000 flag af-unspec esn (0x10100000)
\taead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 (160 bits) 128
\tanti-replay esn context:
\t seq-hi 0x0, seq 0x3, oseq-hi 0x0, oseq 0x0
\t replay_window 128, bitmap-length 4
\t 00000000 00000000 00000000 00000007 
\tlifetime config:
\t  limit: soft 1125899906842624(bytes), hard 2251799813685248(bytes)
\t  limit: soft 1099511627776(packets), hard 2199023255552(packets)
\t  expire add: soft 10800(sec), hard 14400(sec)
\t  expire use: soft 0(sec), hard 0(sec)
\tlifetime current:
\t  252(bytes), 3(packets)
\t  add 2026-11-26 06:01:16 use 2026-11-26 06:01:18
\tstats:
\t  replay-window 0 replay 0 failed 0
src 10.9.0.1 dst 10.9.0.2
\tproto comp spi 0x00001234(4660) reqid 7(0x00000007) mode tunnel
`;

const STATES = `src 192.168.79.1 dst 192.168.79.2
\tproto esp spi 0xa7b1c2d3 reqid 1835073537 mode tunnel
\treplay-window 0 flag af-unspec esn
\taead rfc4106(gcm(aes)) 0xa1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4 128
\tlifetime config:
`;

const POLICIES = `src 10.79.1.0/24 dst 10.79.2.0/24 
\tdir out priority 1000 
\ttmpl src 192.168.79.1 dst 192.168.79.2
\t\tproto esp reqid 1835073537 mode tunnel
src 10.79.2.0/24 dst 10.79.1.0/24 
\tdir fwd priority 1000 
\ttmpl src 192.168.79.2 dst 192.168.79.1
\t\tproto esp reqid 1835073537 mode tunnel
src ::/0 dst ::/0 
\tsocket in priority 0 
`;

const MONITOR = `src 192.168.79.2 dst 192.168.79.1
\tproto esp spi 0x5aba1dcd(1522146765) reqid 1835073537(0x6d610001) mode tunnel
\treplay-window 0 seq 0x00000000 flag af-unspec esn (0x10100000)
Updated src 10.79.1.0/24 dst 10.79.2.0/24 
\tdir out priority 1000 
\ttmpl src 192.168.79.1 dst 192.168.79.2
\t\tproto esp reqid 1835073537 mode tunnel
Deleted src 192.168.79.2 dst 192.168.79.1
\tproto esp spi 0x5aba1dcd(1522146765) reqid 1835073537(0x6d610001) mode tunnel
Async event  (0x20)  timer expired 
\tsrc 192.168.79.2 dst 192.168.79.1  reqid 0x6d610001 protocol esp  SPI 0x5aba1dcd
Deleted src 10.79.1.0/24 dst 10.79.2.0/24 
\tdir out priority 1000 
`;

test('the xfrm parsers read ESP states with keys and counters, tunnel policies and monitor events', (t) => {
  t.deepEqual(parseXfrmStates(STATES_WITH_STATS), [
    { src: '192.168.79.2', dst: '192.168.79.1', spi: 0x5aba1dcd, reqid: 0x6d610001, mode: 'tunnel', aeadKey: '0102030405060708090a0b0c0d0e0f1011121314', packets: 3 },
  ]);
  t.deepEqual(parseXfrmStates(STATES), [
    { src: '192.168.79.1', dst: '192.168.79.2', spi: 0xa7b1c2d3, reqid: 0x6d610001, mode: 'tunnel', aeadKey: 'a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4' },
  ]);
  t.deepEqual(parseXfrmPolicies(POLICIES), [
    { src: '10.79.1.0/24', dst: '10.79.2.0/24', dir: 'out', priority: 1000, tmpl: { src: '192.168.79.1', dst: '192.168.79.2', proto: 'esp', reqid: 0x6d610001, mode: 'tunnel' } },
    { src: '10.79.2.0/24', dst: '10.79.1.0/24', dir: 'fwd', priority: 1000, tmpl: { src: '192.168.79.2', dst: '192.168.79.1', proto: 'esp', reqid: 0x6d610001, mode: 'tunnel' } },
  ]);
  t.deepEqual(parseXfrmEvents(MONITOR, 42), [
    { at: 42, action: 'add', kind: 'state', src: '192.168.79.2', dst: '192.168.79.1', spi: 0x5aba1dcd },
    { at: 42, action: 'update', kind: 'policy', src: '10.79.1.0/24', dst: '10.79.2.0/24', dir: 'out' },
    { at: 42, action: 'delete', kind: 'state', src: '192.168.79.2', dst: '192.168.79.1', spi: 0x5aba1dcd },
    { at: 42, action: 'delete', kind: 'policy', src: '10.79.1.0/24', dst: '10.79.2.0/24', dir: 'out' },
  ]);
});
