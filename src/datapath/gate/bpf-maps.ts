// Opens pinned BPF maps in-process through the `bpf` package (libbpf bindings), after checking
// that each one has the shape this build expects, so a map left by an incompatible version is
// refused with a clear message instead of being read with the wrong layout.
import { readFileSync } from 'node:fs';
import { BPFError, createMapRef, MapType, objGet, type MapRef } from 'bpf';
import { native } from 'bpf/dist/util.js';
import { DatapathError } from '../errors.js';
import type { MapSpec } from './layout.js';

const PER_CPU_TYPES = new Set<MapType>([MapType.PERCPU_ARRAY, MapType.PERCPU_HASH, MapType.LRU_PERCPU_HASH]);

/** Opens the map pinned at `path`; throws DatapathError if it is missing or shaped differently. */
export function openPinnedMap(path: string, spec: MapSpec): MapRef {
  let fd: number;
  try {
    fd = objGet(path);
  } catch (err) {
    throw new DatapathError(`cannot open pinned map ${path}: ${(err as Error).message}`, { cause: err });
  }
  let ref: MapRef;
  try {
    ref = createMapRef(fd, { transfer: true });
  } catch (err) {
    throw new DatapathError(`${path} is not a BPF map: ${(err as Error).message}`, { cause: err });
  }
  if (ref.type !== spec.type || ref.keySize !== spec.keySize || ref.valueSize !== spec.valueSize) {
    const found = `${MapType[ref.type]} key ${ref.keySize} value ${ref.valueSize}`;
    const wanted = `${MapType[spec.type]} key ${spec.keySize} value ${spec.valueSize}`;
    ref.close();
    throw new DatapathError(
      `pinned map ${path} is ${found}, this build needs ${wanted}; run \`meshauth datapath uninstall\` first`,
    );
  }
  return PER_CPU_TYPES.has(ref.type) ? perCpuView(ref) : ref;
}

/**
 * The kernel reads and writes a per-CPU map value as one 8-byte-aligned slot per possible CPU,
 * but the `bpf` package sizes its buffers from valueSize. This view reports the whole
 * per-CPU value size so that the package allocates (and checks) buffers of the real size.
 */
function perCpuView(ref: MapRef): MapRef {
  const valueSize = Math.ceil(ref.valueSize / 8) * 8 * possibleCpuCount();
  return Object.freeze({
    type: ref.type,
    keySize: ref.keySize,
    valueSize,
    maxEntries: ref.maxEntries,
    flags: ref.flags,
    name: ref.name,
    get fd() {
      return ref.fd;
    },
    close: () => ref.close(),
  });
}

let cachedCpuCount: number | undefined;

/** Number of possible CPUs (not online ones): what the kernel copies per-CPU values for. */
export function possibleCpuCount(): number {
  if (cachedCpuCount === undefined) {
    const text = readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim();
    cachedCpuCount = text.split(',').reduce((sum, range) => {
      const [first, last = first] = range.split('-').map(Number) as [number, number?];
      return sum + (last - first + 1);
    }, 0);
  }
  return cachedCpuCount;
}

interface NativeBatch {
  mapUpdateBatch(fd: number, keys: Buffer, values: Buffer, count: number, opts: { elemFlags: number }): [number, number];
}

/**
 * BPF_MAP_UPDATE_BATCH from two packed buffers. RawMap.setBatch wants one [key, value] pair of
 * Buffers per entry and concatenates them again, which costs more than the syscall; this calls
 * the package's own binding (the function behind setBatch) with the packed buffers directly.
 * The binding does not check buffer sizes, so this does.
 */
export function updateBatch(ref: MapRef, keys: Buffer, values: Buffer, count: number): void {
  if (keys.length !== count * ref.keySize || values.length !== count * ref.valueSize) {
    throw new RangeError(`batch of ${count}: ${keys.length} key bytes, ${values.length} value bytes`);
  }
  const [status, done] = (native as NativeBatch).mapUpdateBatch(ref.fd, keys, values, count, { elemFlags: 0 });
  if (status < 0) throw new BPFError(-status, 'bpf_map_update_batch', done);
  if (done !== count) throw new DatapathError(`bpf_map_update_batch updated ${done} of ${count} entries`);
}
