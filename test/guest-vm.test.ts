// What this machine's kernel lacks (ESP, WireGuard), in one boot of the run-in-guest VM
// (Debian's stock kernel under qemu's software emulation; test/guest/run.sh):
// 1. transport-scenarios: kernel WireGuard and kernel IPsec between two node namespaces, every
//    check of test/guest/transport-checks.ts;
// 2. agent-ipsec: two real agents (the built CLI, `transport.mode: ipsec`) program ESP states and
//    policies from their node handshake, re-key and remove them.
// One boot for both: two guests at once on a 2-core machine starve each other. The limits are
// about twice what a run took on a 2-core machine loaded to a load average of 14 (compilers and
// other tests beside it): boot 12 s, transport-scenarios 223 s, agent-ipsec 258 s. The failure
// message names the stage that ran out of time.
import test from 'ava';
import { WIREGUARD_CHECKS } from './guest/transport-checks.js';
import { guestRunSeconds, runGuestStages, type GuestRun } from './helpers/guest.js';

const RUN: GuestRun = {
  bootLimitSeconds: 60,
  stages: [
    {
      program: 'transport-scenarios',
      limitSeconds: 450,
      expectedChecks: [
        'setup',
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
      ],
    },
    {
      program: 'agent-ipsec',
      limitSeconds: 540,
      expectedChecks: [
        'setup',
        'agent.states-from-handshake',
        'agent.policies-select-pod-cidrs',
        'agent.sas-carry-traffic',
        'agent.reauth-new-spis-and-keys',
        'agent.new-sas-carry-traffic',
        'agent.reauth-make-before-break',
        'agent.removed-node-cleaned-up',
        'secrets.not-in-logs',
        'secrets.not-on-cmdline',
      ],
    },
  ],
};

test('kernel WireGuard, kernel IPsec and two agents on IPsec, in one guest boot', async (t) => {
  t.timeout((guestRunSeconds(RUN) + 30) * 1000, 'the guest run (see the stage limits)');
  const stages = await runGuestStages(t, RUN);
  t.log(`agent-ipsec setup: ${JSON.stringify(stages.get('agent-ipsec')?.get('setup')?.detail)}`);
});
