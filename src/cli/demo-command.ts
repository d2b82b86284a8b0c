// `meshauth demo [--keep]`: the guided two-node demo (src/demo/demo.ts); `--cleanup` removes
// clusters a demo left behind (--keep, or a demo that was killed before it could clean up).
import type { Command } from 'commander';
import { cleanupManifest, findManifests, inUse } from '../demo/cluster.js';
import { Demo } from '../demo/demo.js';
import { UsageError } from './errors.js';

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description('Run the two-node demo in network namespaces with real agents, the eBPF gate and WireGuard (root)')
    .option('--keep', 'leave the demo cluster running afterwards and print how to explore it')
    .option('--cleanup', 'remove the demo clusters left on this machine, then exit')
    .action(async (options: { keep?: boolean; cleanup?: boolean }) => {
      if (options.cleanup && options.keep) throw new UsageError('--cleanup and --keep exclude each other');
      if (options.cleanup) return cleanupLeftovers();
      const demo = new Demo({ keep: options.keep === true });
      let interrupted = false;
      const onSignal = (signal: NodeJS.Signals): void => {
        if (interrupted) return;
        interrupted = true;
        void demo.interrupt(signal).finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
      };
      // `on`, not `once`: execa's exit hook re-raises a signal nobody else listens to any more,
      // which would end the process before the cleanup has run.
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      const passed = await demo.run();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      process.exitCode = passed ? 0 : 1;
    });
}

async function cleanupLeftovers(): Promise<void> {
  const manifests = await findManifests();
  let failed = false;
  for (const manifest of manifests) {
    if (inUse(manifest)) {
      console.log(`demo ${manifest.tag}: still run by pid ${manifest.ownerPid}; left alone (stop that demo instead)`);
      continue;
    }
    const problems = await cleanupManifest(manifest);
    failed ||= problems.length > 0;
    console.log(problems.length === 0 ? `demo ${manifest.tag}: removed` : `demo ${manifest.tag}: ${problems.join('; ')}`);
  }
  if (manifests.length === 0) console.log('no demo clusters to clean up');
  if (failed) process.exitCode = 1;
}
