// Kernel WireGuard and kernel IPsec, which this machine's kernel lacks: one boot of the
// run-in-guest VM (Debian's stock kernel under qemu) runs test/guest/transport.sh, which runs
// every check of test/guest/transport-checks.ts in one node process and prints a JSON line per
// check. This test asserts that each expected check ran and passed. A missing qemu or kernel is
// a failure with the reason, never a silent pass.
import test from 'ava';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** CI puts shared/ beside the clone. */
const RUN_IN_GUEST = resolve(ROOT, '../shared/tools/run-in-guest');

const EXPECTED_CHECKS = [
  'wg.implementation',
  'wg.forged-handshake-blocks',
  'wg.matching-psk-passes',
  'wg.wire-encrypted',
  'wg.rekey-lossless',
  'wg.new-psk-in-effect',
  'wg.remove-peer',
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

interface CheckLine {
  check: string;
  ok: boolean;
  detail?: unknown;
}

test('kernel WireGuard and kernel IPsec in the guest VM', async (t) => {
  t.timeout(240_000, 'the guest run (boot, node, every transport check)');
  if (!existsSync(RUN_IN_GUEST)) return t.fail(`${RUN_IN_GUEST} not found: the guest tool comes from shared/tools beside the repository`);
  const result = await execa(RUN_IN_GUEST, ['test/guest/transport.sh'], { cwd: ROOT, reject: false, env: { GUEST_TIMEOUT: '220' } });
  if (result.exitCode === 125) {
    return t.fail(
      `the guest VM did not run (needs qemu-system-x86, busybox-static, cpio, kmod, xz-utils and linux-image-amd64: scripts/setup.sh installs them):\n${result.stderr}`,
    );
  }
  const checks = new Map<string, CheckLine>();
  for (const line of result.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    const parsed = JSON.parse(line) as CheckLine;
    if (typeof parsed.check === 'string') checks.set(parsed.check, parsed);
  }
  for (const name of EXPECTED_CHECKS) {
    const check = checks.get(name);
    t.true(check?.ok === true, `${name}: ${check ? JSON.stringify(check.detail) : 'did not run'}`);
  }
  const unexpected = [...checks.values()].filter((c) => !c.ok && !EXPECTED_CHECKS.includes(c.check));
  t.deepEqual(unexpected, [], 'an extra check failed (e.g. a scenario threw)');
  t.is(result.exitCode, 0, result.stderr);
});
