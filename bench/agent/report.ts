// How the agent benchmark prints its figures: each with its ratio to the target.

export function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

export const median = (values: readonly number[]) => percentile(values, 50);
export const fmt = (n: number) => (Math.abs(n) >= 1000 ? Math.round(n).toLocaleString('en-US') : n.toFixed(Math.abs(n) < 10 ? 3 : 1));
export const list = (values: readonly number[]) => `[${values.map((v) => v.toFixed(v < 10 ? 2 : 0)).join(', ')}]`;
export const thousands = (n: number) => n.toLocaleString('en-US');

export function report(label: string, value: number, unit: string, target: number): void {
  const ok = value <= target;
  console.log(`${label.padEnd(58)} ${fmt(value).padStart(9)} ${unit.padEnd(3)} target ≤ ${fmt(target)} (${(value / target).toFixed(2)}× target) ${ok ? 'ok' : 'MISSED'}`);
}

export function info(label: string, text: string): void {
  console.log(`${label.padEnd(58)} ${text}`);
}
