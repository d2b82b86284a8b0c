// Tests that need root (network namespaces, bpffs, tc, TCX, WireGuard, XFRM). Not as root they
// fail saying so, never skip: a run that skipped them would be green while checking nothing.
import test, { type ExecutionContext } from 'ava';

type Implementation = (t: ExecutionContext) => Promise<void> | void;

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

function requiringRoot(implementation: Implementation): Implementation {
  return (t) => (isRoot() ? implementation(t) : t.fail('this test needs root (namespaces, bpffs, tc): run the suite as root, as CI does'));
}

/** A privileged test that runs alone (the usual case: it builds namespaces and attaches programs). */
export function privileged(title: string, implementation: Implementation): void {
  test.serial(title, requiringRoot(implementation));
}

/** A privileged test that may run beside the file's others (it touches only its own pinned maps). */
export function privilegedConcurrent(title: string, implementation: Implementation): void {
  test(title, requiringRoot(implementation));
}
