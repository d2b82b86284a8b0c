// One peer cannot exhaust the IPsec SPIs reserved for node frames (#16, item 7). Every node
// handshake hands the peer one inbound SPI from a small pool, reserved until the peer is
// installed with it or 60 s pass. Before the fix, one peer's burst of handshakes (each failing
// after its frame) took the whole pool, and every other peer's handshake failed until the pool
// was refilled. No kernel here: `ip xfrm state list` is stood in for (no states).
import test, { type ExecutionContext } from 'ava';
import { IpsecAdapter } from '../src/datapath/transport/ipsec-adapter.js';
import { SpiPool } from '../src/datapath/transport/ipsec-spi-pool.js';
import { NetnsExec } from '../src/datapath/transport/exec.js';
import { silentLogger } from '../src/util/logger.js';

function stub<T extends object, K extends keyof T>(t: ExecutionContext, object: T, key: K, value: T[K]): void {
  const original = object[key];
  object[key] = value;
  t.teardown(() => {
    object[key] = original;
  });
}

function stubXfrmList(t: ExecutionContext): void {
  stub(t, NetnsExec.prototype, 'run', function (command: string, args: readonly string[]): Promise<string> {
    if (command === 'ip' && args[0] === 'xfrm' && args[2] === 'list') return Promise.resolve('');
    return Promise.reject(new Error(`no kernel in this test for: ${command} ${args.join(' ')}`));
  });
}

test('a peer holds at most two SPIs not yet installed: its further handshakes are refused, other peers still get theirs', async (t) => {
  stubXfrmList(t);
  const logger = silentLogger();
  const ipsec = new IpsecAdapter({ logger }, () => ({ address: '10.0.0.1', podCidrs: ['10.244.1.0/24'] }), logger);
  t.teardown(() => ipsec.close());
  await ipsec.start();
  // A burst of node handshakes from one peer, each taking its frame's SPI (as the responder does
  // after authorizing the peer), none of them completing.
  const outcomes = Array.from({ length: 20 }, () => {
    try {
      return ipsec.localFrame('node-x').ipsecSpis?.length === 1 ? 'spi' : 'none';
    } catch {
      return 'refused';
    }
  });
  t.deepEqual(outcomes.filter((outcome) => outcome === 'spi').length, 2, 'two: enough for two crossing handshakes');
  for (const peer of ['node-y', 'node-z']) t.is(ipsec.localFrame(peer).ipsecSpis?.length, 1, `${peer} still gets an SPI`);
});

test('a peer\'s share frees when its SPI is installed or its handshake has certainly ended; refusals are counted by reason', async (t) => {
  let now = 0;
  let next = 1000;
  const released: number[] = [];
  const reservations = {
    allocateSpis: (count: number) => Promise.resolve(Array.from({ length: count }, () => next++)),
    releaseSpis: (spis: readonly number[]) => void released.push(...spis),
  };
  const refusals: string[] = [];
  const pool = new SpiPool(reservations, silentLogger(), (reason) => refusals.push(reason), () => now);
  await pool.fill();
  const first = pool.take('node-x');
  pool.take('node-x');
  t.throws(() => pool.take('node-x'));
  pool.installed(first);
  t.notThrows(() => pool.take('node-x'), 'installed: no longer counted');
  t.throws(() => pool.take('node-x'));
  now += 15_001;
  t.notThrows(() => pool.take('node-x'), 'handshakes that old have ended');
  t.deepEqual(refusals, ['peer_share', 'peer_share']);
  now += 60_000;
  pool.take('node-y');
  t.is(released.length, 2, 'the two never installed are given back after 60 s');
  await pool.close();
});
