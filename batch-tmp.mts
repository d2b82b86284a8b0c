import { Datapath, monotonicNowNs } from './src/datapath/datapath.js';
import { encodeAuthKey, encodeAuthValue } from './src/datapath/layout.js';
const dp = await Datapath.open({ pinDir: '/sys/fs/bpf/batch-tmp' });
const N = 200_000;
const now = monotonicNowNs() + 10n ** 12n;
const entries = Array.from({ length: N }, (_, i) => ({ key: { localIdentity: 1 + (i % 1000), remoteIdentity: 1 + i, remoteNode: i % 60000 }, expiryNs: now }));
for (let r = 0; r < 3; r++) {
  let t = process.hrtime.bigint();
  const enc = entries.map((e) => [encodeAuthKey(e.key), encodeAuthValue(e.expiryNs)]);
  let t2 = process.hrtime.bigint();
  console.log('encode/s', N / (Number(t2 - t) / 1e9));
  t = process.hrtime.bigint();
  dp.batchSetAuth(entries);
  t2 = process.hrtime.bigint();
  console.log('batch/s', N / (Number(t2 - t) / 1e9));
  t = process.hrtime.bigint();
  for (const e of entries) dp.setAuth(e.key, e.expiryNs);
  t2 = process.hrtime.bigint();
  console.log('single/s', N / (Number(t2 - t) / 1e9));
}
dp.close();
await Datapath.uninstall({ pinDir: '/sys/fs/bpf/batch-tmp' });
