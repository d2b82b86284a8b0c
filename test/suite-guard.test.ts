// The suite cannot pass by skipping: `npm test` refuses to start without root, and a privileged
// test run without root fails saying why (test/helpers/privileged.ts).
import test from 'ava';
import { chmod, chown, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];

/** A home (and TMPDIR) that the unprivileged user owns. */
async function nobodysHome(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const home = await mkdtemp(join(tmpdir(), 'meshauth-nobody-'));
  t.teardown(() => rm(home, { recursive: true, force: true }));
  await chown(home, 65534, 65534);
  return home;
}

test('npm test refuses to start without root, saying why', async (t) => {
  const home = await nobodysHome(t);
  const run = await execa('setpriv', [...NOBODY, 'npm', 'run', 'pretest'], {
    reject: false,
    env: { HOME: home, npm_config_cache: join(home, 'npm'), npm_config_update_notifier: 'false' },
  });
  t.not(run.exitCode, 0);
  t.regex(run.stderr, /the suite needs root/);
});

test('a privileged test run without root fails with the reason instead of skipping', async (t) => {
  // Inside test/ (ava runs only files its glob matches), removed whatever happens.
  const dir = await mkdtemp(join(process.cwd(), 'test', 'guard-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await chmod(dir, 0o755); // mkdtemp makes it 0700: nobody could not list it
  const file = join(dir, 'needs-root.test.ts');
  await writeFile(file, "import { privileged } from '../helpers/privileged.js';\nprivileged('needs root', (t) => t.pass());\n");
  const home = await nobodysHome(t);
  const run = await execa('setpriv', [...NOBODY, process.execPath, 'node_modules/ava/entrypoints/cli.mjs', file], {
    reject: false,
    env: { HOME: home, TMPDIR: home },
    all: true,
  });
  t.not(run.exitCode, 0, run.all);
  t.regex(run.all ?? '', /this test needs root/);
});
