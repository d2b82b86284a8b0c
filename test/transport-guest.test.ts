// Kernel WireGuard and kernel IPsec, which this machine's kernel lacks: one boot of the
// run-in-guest VM (Debian's stock kernel under qemu) runs test/guest/transport.sh, which runs
// every check of test/guest/transport-checks.ts in one node process and prints a JSON line per
// check. This test asserts that each expected check ran and passed. A missing qemu or kernel is
// a failure with the reason, never a silent pass.
import test from 'ava';
import { WIREGUARD_CHECKS } from './guest/transport-checks.js';
import { runGuestChecks } from './helpers/guest.js';

const EXPECTED_CHECKS = [
  ...WIREGUARD_CHECKS,
  'ipsec.wrong-key-blocks',
  'ipsec.wire-encrypted',
  'ipsec.rekey-lossless',
  'ipsec.rekey-switches-to-new-sa',
  'ipsec.old-states-retired',
  'ipsec.refuses-conflicts',
  'ipsec.restart-adopts',
  'ipsec.remove-cleans-up',
  'ipsec.uninstall',
  'ipsec.hard-lifetime-fails-closed',
  'secrets.not-on-cmdline',
  'secrets.not-in-logs',
];

test('kernel WireGuard and kernel IPsec in the guest VM', async (t) => {
  t.timeout(240_000, 'the guest run (boot, node, every transport check)');
  await runGuestChecks(t, { script: 'test/guest/transport.sh', expectedChecks: EXPECTED_CHECKS, guestTimeoutSeconds: 220 });
});
