// `npm run test:cluster` (test/cluster/run-checks.sh): the real-cluster checks, apart from `npm test`'s
// files (they need a cluster that run-checks.sh brings up, and run in order against it).
export default {
  files: ['test/cluster/checks/**/*.check.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx'],
  timeout: '10m',
  concurrency: 1,
  workerThreads: false,
};
