import { Datapath } from './src/datapath/datapath.js';
import { sleep } from './src/util/backoff.js';
const dp = await Datapath.open({ pinDir: '/sys/fs/bpf/idle-tmp', capacities: { auth: 1024 } });
for (const idle of [4, 3, 2]) {
  const dp2 = await Datapath.open({ pinDir: '/sys/fs/bpf/idle-tmp', signalPolling: { idleIntervalMs: idle } });
  const un = dp2.onSignal(() => {});
  await sleep(300);
  const c0 = process.cpuUsage(); const w0 = process.hrtime.bigint();
  await sleep(5000);
  const c = process.cpuUsage(c0); const w = Number(process.hrtime.bigint() - w0) / 1000;
  console.log(idle, 'ms idle:', ((c.user + c.system) / w * 100).toFixed(3), '%', c);
  un(); dp2.close();
}
// baseline: a bare setTimeout loop at 4ms
let n = 0; let stop = false;
const loop = () => { n++; if (!stop) setTimeout(loop, 4); };
loop();
const c0 = process.cpuUsage(); const w0 = process.hrtime.bigint();
await sleep(5000); stop = true;
const c = process.cpuUsage(c0); const w = Number(process.hrtime.bigint() - w0) / 1000;
console.log('bare timer 4ms:', ((c.user + c.system) / w * 100).toFixed(3), '%', n);
dp.close(); await Datapath.uninstall({ pinDir: '/sys/fs/bpf/idle-tmp' });
