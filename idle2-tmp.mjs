import { Worker } from 'node:worker_threads';
const src = `
const { workerData } = require('node:worker_threads');
const bpf = require('bpf');
const q = new bpf.RawQueueMap(bpf.createMapRef(bpf.objGet(workerData.path), { transfer: true }));
const cell = new Int32Array(new SharedArrayBuffer(4));
const buf = Buffer.alloc(24);
for (;;) { Atomics.wait(cell, 0, 0, workerData.ms); q.pop(buf); }
`;
for (const ms of [4, 2]) {
  const w = new Worker(src, { eval: true, workerData: { path: '/sys/fs/bpf/idle-tmp2/maps/signals', ms } });
  await new Promise(r => setTimeout(r, 300));
  const c0 = process.cpuUsage(); const t0 = Date.now();
  await new Promise(r => setTimeout(r, 5000));
  const c = process.cpuUsage(c0);
  console.log(ms, 'ms worker:', ((c.user + c.system) / ((Date.now() - t0) * 1000) * 100).toFixed(3), '%');
  await w.terminate();
}
