import test from 'ava';
import { LAYERS, checkLayers, checkReadmeTable, layerOf } from '../scripts/check-layers.js';

const layers = [['src/util'], ['src/identity'], ['src/datapath/gate', 'src/datapath/transport'], ['src/agent'], ['test']];
const files = (entries: Record<string, string>) => new Map(Object.entries(entries));

test('imports down the layers and within a layer pass', (t) => {
  const problems = checkLayers(
    files({
      'src/util/log.ts': '',
      'src/identity/store.ts': "import { log } from '../util/log.js';\nimport type { X } from './types.js';",
      'src/identity/types.ts': "import { log } from '../util/log.js';",
      'src/agent/agent.ts': "import { Store } from '../identity/store.js';\nexport { gate } from '../datapath/gate/gate.js';",
      'src/datapath/gate/gate.ts': '',
      'test/agent.test.ts': "import { Agent } from '../src/agent/agent.js';",
    }),
    layers,
  );
  t.deepEqual(problems, []);
});

test('a synthetic backward import is flagged, type-only and dynamic imports too', (t) => {
  const problems = checkLayers(
    files({
      'src/agent/status.ts': '',
      'src/identity/store.ts': "import type { Status } from '../agent/status.js';",
      'src/identity/lazy.ts': "const status = await import('../agent/status.js');",
      'src/util/log.ts': "import '../../test/helpers/x.js';",
      'test/helpers/x.ts': '',
    }),
    layers,
  );
  t.deepEqual(
    problems.map((p) => [p.kind, p.message.split(' ')[0]]),
    [
      ['backward', 'src/identity/store.ts'],
      ['backward', 'src/identity/lazy.ts'],
      ['backward', 'src/util/log.ts'],
    ],
  );
});

test('siblings on one rank may not import each other', (t) => {
  const problems = checkLayers(files({ 'src/datapath/gate/a.ts': "import '../transport/b.js';", 'src/datapath/transport/b.ts': '' }), layers);
  t.deepEqual(problems.map((p) => p.kind), ['sibling']);
});

test('an import cycle is flagged, also inside one layer', (t) => {
  const problems = checkLayers(
    files({
      'src/identity/a.ts': "import { b } from './b.js';",
      'src/identity/b.ts': "import { c } from './c.js';",
      'src/identity/c.ts': "export { a } from './a.js';",
    }),
    layers,
  );
  t.deepEqual(problems, [{ kind: 'cycle', message: 'import cycle: src/identity/a.ts -> src/identity/b.ts -> src/identity/c.ts -> src/identity/a.ts' }]);
});

test('a file in no layer is flagged', (t) => {
  t.deepEqual(checkLayers(files({ 'src/stray/x.ts': '' }), layers).map((p) => p.kind), ['unplaced']);
});

test('the deepest layer folder holding a file is its layer', (t) => {
  t.deepEqual(layerOf('src/datapath/gate/hooks.ts', [['src/datapath'], ['src/datapath/gate']]), { layer: 'src/datapath/gate', rank: 1 });
  t.deepEqual(layerOf('src/datapath/errors.ts', [['src/datapath'], ['src/datapath/gate']]), { layer: 'src/datapath', rank: 0 });
});

test('the README table must list the src/ layers in order', (t) => {
  const table = (rows: string[]) => ['| folder | job |', '|---|---|', ...rows.map((row) => `| \`${row}\` | ... |`)].join('\n');
  t.deepEqual(checkReadmeTable(table(['src/util/', 'src/identity/', 'src/datapath/gate/', 'src/datapath/transport/', 'src/agent/', 'bpf/']), layers), []);
  t.is(checkReadmeTable(table(['src/identity/', 'src/util/']), layers)[0]?.kind, 'readme');
});

test('the layer order names each folder once', (t) => {
  const all = LAYERS.flat();
  t.is(new Set(all).size, all.length);
});
