import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ControlServer } from '../src/control/server.js';
import { runCli } from './helpers/cli.js';
import { sampleStatus } from './helpers/sample-status.js';

let dir: string;
let socketPath: string;
let server: ControlServer;

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshauth-status-cli-'));
  socketPath = join(dir, 'run', 'control.sock');
  server = await ControlServer.start({ socketPath, status: sampleStatus });
});

test.after.always(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

test('meshauth status prints the tables of the running agent', async (t) => {
  const result = await runCli(['status', '--socket', socketPath]);
  t.is(result.exitCode, 0, result.stderr);
  t.is(result.stderr, '');
  t.regex(result.stdout, /^Node node-a .*provider dev\s+ready/);
  for (const heading of [/^Identities \(2\)$/m, /^Pairs \(3, 1 authenticated\)$/m, /^Peers \(2\)$/m, /^Datapath: auth map 1 of 524288 entries/m]) {
    t.regex(result.stdout, heading);
  }
  t.regex(result.stdout, /spiffe:\/\/cluster\.local\/ns\/prod\/sa\/db\s+node-b\s+authenticated\s+\S+ \S+ \(in \S+/);
  t.regex(result.stdout, /node-b\s+10\.0\.0\.2\s+wireguard\s+up\s+7/);
  t.regex(result.stdout, /allowed\s+18446744073709551615$/m);
});

test('meshauth status --json prints the raw AgentStatus', async (t) => {
  const result = await runCli(['status', '--json', '--socket', socketPath]);
  t.is(result.exitCode, 0, result.stderr);
  t.deepEqual(JSON.parse(result.stdout), sampleStatus());
});

test('no agent: exit 1 with one clear line', async (t) => {
  const missing = join(dir, 'absent', 'control.sock');
  for (const args of [['status', '--socket', missing], ['status', '--json', '--socket', missing]]) {
    const result = await runCli(args);
    t.is(result.exitCode, 1);
    t.is(result.stdout, '');
    t.is(result.stderr, `meshauth: no agent is running (nothing listening on ${missing})`);
  }
});

test('another user: exit 1, "permission denied"', async (t) => {
  t.is(process.getuid?.(), 0, 'this test runs as root (as CI does) to run the CLI as the user nobody');
  const result = await runCli(['status', '--socket', socketPath], { uid: 65534, gid: 65534 });
  t.is(result.exitCode, 1);
  t.is(result.stdout, '');
  t.regex(result.stderr, new RegExp(`^meshauth: permission denied on ${socketPath} \\(run as the agent's user, usually root\\)$`));
});
