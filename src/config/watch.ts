import { watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';

// Config files are often replaced, not edited: editors write a new file and rename it over the
// old one, and Kubernetes swaps the symlink behind a mounted ConfigMap. Watching the file's inode
// misses both, so the directory is watched, and events are debounced into one reload.
const DEBOUNCE_MS = 200;

/** Calls onChange (debounced) whenever the file at path may have changed; returns a stop function. */
export function watchConfigFile(path: string, onChange: () => void): () => void {
  const name = basename(path);
  let timer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  try {
    watcher = watch(dirname(path), { persistent: false }, (_event, changed) => {
      // Kubernetes ConfigMaps change through "..data" symlink swaps, not the file's own name.
      if (changed !== null && changed !== name && !changed.startsWith('..')) return;
      clearTimeout(timer);
      timer = setTimeout(onChange, DEBOUNCE_MS);
    });
  } catch {
    // A directory that cannot be watched leaves SIGHUP as the way to reload.
    return () => {};
  }
  return () => {
    clearTimeout(timer);
    watcher?.close();
  };
}
