// How the gate runs its tools: a tool that does not finish is killed and the run fails.
import test from 'ava';
import { DatapathError } from '../src/datapath/errors.js';
import { run } from '../src/datapath/gate/run-in.js';

test('a tool that does not finish is killed and its run fails, naming the command', async (t) => {
  const started = performance.now();
  const err = await t.throwsAsync(run('sleep', ['30'], undefined, 200), { instanceOf: DatapathError });
  t.regex(err.message, /^sleep 30 did not finish within 200 ms and was killed$/);
  t.true(performance.now() - started < 25_000, 'killed long before sleep would have ended');
});

test('a tool that fails reports its stderr', async (t) => {
  const err = await t.throwsAsync(run('sh', ['-c', 'echo broken >&2; exit 3']), { instanceOf: DatapathError });
  t.regex(err.message, /failed: broken$/);
});
