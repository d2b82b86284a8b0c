// Durations in config and on the command line are written like "1h", "90s", "500ms", "1h30m".
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/g;

/** Parses a duration to milliseconds; throws with the accepted form on bad input. */
export function parseDuration(text: string): number {
  const trimmed = text.trim();
  let total = 0;
  let consumed = 0;
  for (const match of trimmed.matchAll(PART)) {
    if (match.index !== consumed) break;
    total += Number(match[1]) * (UNIT_MS[match[2] ?? ''] ?? Number.NaN);
    consumed += match[0].length;
  }
  if (trimmed.length === 0 || consumed !== trimmed.length || !Number.isFinite(total)) {
    throw new Error(`invalid duration "${text}": expected a number with a unit (ms, s, m, h, d), e.g. "90s" or "1h30m"`);
  }
  return total;
}
