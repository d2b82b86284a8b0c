// Runs as root inside the run-in-guest VM (test/guest/run.sh), whose Debian kernel has the
// WireGuard and ESP modules this machine lacks: kernel WireGuard and kernel IPsec between two
// node namespaces. Prints one JSON line per check ({"check", "ok", "detail"}); exits 1 when a
// check failed. A scanner watches every process's command line and environment for the keys
// meanwhile, and the transports log (debug level) into memory, searched for the keys at the end.
import { CmdlineScanner } from '../helpers/secret-scanner.js';
import { TransportTopology } from '../helpers/transport-topology.js';
import { capturedLogger, ipsecChecks, ipsecSecrets, leakedIn, wireguardChecks, wireguardSecrets, type Record } from './transport-checks.js';

let failed = false;
const started = Date.now();
const record: Record = (check, ok, detail) => {
  failed ||= !ok;
  console.log(JSON.stringify({ check, ok, atMs: Date.now() - started, detail }));
};

const { logger, text } = capturedLogger();
const wgSecrets = await wireguardSecrets();
const espKeys = ipsecSecrets();
const secrets = [...wgSecrets.privateKeys, ...wgSecrets.psks, ...espKeys];
const scanner = new CmdlineScanner(secrets);
const topology = await TransportTopology.create();
record('setup', true, { topologyReadyMs: Date.now() - started });
try {
  for (const [group, run] of [
    ['wg', () => wireguardChecks(topology, { implementation: 'kernel', secrets: wgSecrets, logger, record })],
    ['ipsec', () => ipsecChecks(topology, { keys: espKeys, logger, record })],
  ] as const) {
    try {
      await run();
    } catch (err) {
      record(`${group}.error`, false, (err as Error).stack);
    }
  }
} finally {
  const report = await scanner.stop();
  const sawTools = report.commandsSeen.some((c) => /\bwg (set|syncconf)\b/.test(c)) && report.commandsSeen.some((c) => /\bip\b.*-batch/.test(c));
  record('secrets.not-on-cmdline', report.hits.length === 0 && sawTools && report.scans > 10, {
    scans: report.scans,
    hits: report.hits,
    toolCommandsSeen: report.commandsSeen.filter((c) => /\b(wg|ip)\b/.test(c)).length,
  });
  const logs = text();
  record('secrets.not-in-logs', logs.length > 0 && leakedIn(logs, secrets) === 0, { logBytes: logs.length, leaked: leakedIn(logs, secrets) });
  await topology.cleanup();
  await wgSecrets.cleanup();
}
process.exit(failed ? 1 : 0);
