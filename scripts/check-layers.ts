// The import rules of meshauth's layout, checked over the import graph of src/, test/ and bench/
// (run by `npm run lint`): a file imports only from its own layer and from layers of a lower
// rank, never from a higher one nor from a sibling on its own rank, and no files import each
// other in a cycle. The README's architecture table lists the same folders in the same order.
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, posix, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import ts from 'typescript';

/**
 * The layers, lowest rank first. A layer is a folder (its subfolders belong to it unless they are
 * layers themselves); layers on one rank are siblings that must not import each other. This is
 * the one place the order is defined: the README documents it.
 */
export const LAYERS: readonly (readonly string[])[] = [
  ['src/util'],
  ['src/metrics', 'src/netns'],
  ['src/identity'],
  ['src/handshake'],
  ['src/datapath'],
  ['src/datapath/gate', 'src/datapath/transport'],
  ['src/auth'],
  ['src/cluster'],
  ['src/control'],
  ['src/config'],
  ['src/agent'],
  ['src/demo'],
  ['src/cli'],
  ['test'],
  ['bench'],
];

const ROOTS = ['src', 'test', 'bench'];

export interface LayerProblem {
  kind: 'backward' | 'sibling' | 'unplaced' | 'cycle' | 'readme';
  message: string;
}

/** Each file's relative imports (type-only and dynamic ones too), resolved to repository paths. */
export function importGraph(files: ReadonlyMap<string, string>): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const [file, text] of files) {
    const targets = ts
      .preProcessFile(text, true, true)
      .importedFiles.map((imported) => imported.fileName)
      .filter((specifier) => specifier.startsWith('.'))
      .map((specifier) => posix.normalize(posix.join(posix.dirname(file), specifier)).replace(/\.js$/, '.ts'))
      .filter((target) => files.has(target));
    graph.set(file, [...new Set(targets)]);
  }
  return graph;
}

/** The layer a file belongs to: the deepest layer folder holding it. */
export function layerOf(file: string, layers: readonly (readonly string[])[] = LAYERS): { layer: string; rank: number } | undefined {
  let found: { layer: string; rank: number } | undefined;
  layers.forEach((rank, index) => {
    for (const layer of rank) {
      if (file.startsWith(`${layer}/`) && (!found || layer.length > found.layer.length)) found = { layer, rank: index };
    }
  });
  return found;
}

/** Every import that reaches up or sideways, every file outside the layers, every cycle. */
export function checkLayers(files: ReadonlyMap<string, string>, layers: readonly (readonly string[])[] = LAYERS): LayerProblem[] {
  const graph = importGraph(files);
  const problems: LayerProblem[] = [];
  for (const [file, targets] of graph) {
    const from = layerOf(file, layers);
    if (!from) {
      problems.push({ kind: 'unplaced', message: `${file} is in no layer (add its folder to LAYERS in scripts/check-layers.ts and to the README)` });
      continue;
    }
    for (const target of targets) {
      const to = layerOf(target, layers);
      if (!to || to.layer === from.layer) continue;
      if (to.rank > from.rank) problems.push({ kind: 'backward', message: `${file} (${from.layer}) imports ${target} from a higher layer (${to.layer})` });
      else if (to.rank === from.rank) problems.push({ kind: 'sibling', message: `${file} (${from.layer}) imports ${target} from its sibling ${to.layer}` });
    }
  }
  for (const cycle of importCycles(graph)) problems.push({ kind: 'cycle', message: `import cycle: ${[...cycle, cycle[0]].join(' -> ')}` });
  return problems;
}

/** The strongly connected components of more than one file, or of one file importing itself
 *  (Tarjan's algorithm), each listed along its import edges. */
export function importCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const index = new Map<string, number>();
  const lowlink = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const visit = (file: string): void => {
    index.set(file, index.size);
    lowlink.set(file, index.get(file)!);
    stack.push(file);
    onStack.add(file);
    for (const target of graph.get(file) ?? []) {
      if (!index.has(target)) {
        visit(target);
        lowlink.set(file, Math.min(lowlink.get(file)!, lowlink.get(target)!));
      } else if (onStack.has(target)) {
        lowlink.set(file, Math.min(lowlink.get(file)!, index.get(target)!));
      }
    }
    if (lowlink.get(file) !== index.get(file)) return;
    const component: string[] = [];
    let member: string;
    do {
      member = stack.pop()!;
      onStack.delete(member);
      component.push(member);
    } while (member !== file);
    if (component.length > 1 || graph.get(file)?.includes(file)) cycles.push(orderAlongImports(component, graph));
  };
  for (const file of [...graph.keys()].sort()) if (!index.has(file)) visit(file);
  return cycles;
}

// A component's files in an order where each imports the next (as far as one path allows), so
// the message reads as the cycle it is.
function orderAlongImports(component: readonly string[], graph: ReadonlyMap<string, readonly string[]>): string[] {
  const members = new Set(component);
  const start = [...component].sort()[0]!;
  const path = [start];
  for (;;) {
    const next = graph.get(path[path.length - 1]!)?.find((target) => members.has(target) && !path.includes(target));
    if (!next) return path;
    path.push(next);
  }
}

/** The src/ folders of the README's architecture table must be exactly the src/ layers, in order. */
export function checkReadmeTable(readme: string, layers: readonly (readonly string[])[] = LAYERS): LayerProblem[] {
  const listed = [...readme.matchAll(/^\| `(src\/[^`]*?)\/?` \|/gm)].map((match) => match[1]!);
  const expected = layers.flat().filter((layer) => layer.startsWith('src/'));
  if (listed.join(' ') === expected.join(' ')) return [];
  return [{ kind: 'readme', message: `the README's architecture table lists ${listed.join(', ') || 'no src/ folder'}; the layers are ${expected.join(', ')}` }];
}

function readSources(root: string): Map<string, string> {
  const files = new Map<string, string>();
  const walk = (dir: string): void => {
    for (const entry of readdirSync(join(root, dir), { withFileTypes: true })) {
      const path = posix.join(dir, entry.name);
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts')) files.set(path, readFileSync(join(root, path), 'utf8'));
    }
  };
  for (const dir of ROOTS) walk(dir);
  return files;
}

function main(): void {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  const problems = [...checkLayers(readSources(root)), ...checkReadmeTable(readFileSync(join(root, 'README.md'), 'utf8'))];
  for (const problem of problems) console.error(`check-layers: ${problem.message}`);
  if (problems.length > 0) {
    console.error(`check-layers: ${problems.length} problem(s); the layers, lowest first: ${LAYERS.map((rank) => rank.join(' | ')).join(' < ')}`);
    process.exitCode = 1;
  } else {
    console.log(`check-layers: ${relative(process.cwd(), root) || '.'}: imports follow the layers, no cycles`);
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main();
