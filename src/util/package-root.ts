import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * A file of the meshauth package, found from this module's location whether it runs from src/
 * (tsx) or dist/: the build's artifacts that are not JavaScript (bpf/gate.bpf.o, native/…).
 */
export function packageFile(relative: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('cannot locate the meshauth package root');
    dir = parent;
  }
  return join(dir, relative);
}
