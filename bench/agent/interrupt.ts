// SIGINT/SIGTERM stop the benchmark at its next checkpoint, so that it cleans up what it made
// (a second signal exits at once).

/** Set by SIGINT/SIGTERM. */
let interruptedBy: string | undefined;

export function stopAtCheckpointsOnSignals(): void {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (interruptedBy) process.exit(130);
      interruptedBy = signal;
    });
  }
}

/** Throws once a signal asked the run to stop. */
export function checkpoint(): void {
  if (interruptedBy) throw new Error(`interrupted by ${interruptedBy}`);
}
