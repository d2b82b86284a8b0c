import type { ReservedPeerRef } from './reserved.js';
import type { EndpointInfo, PolicyMode, PolicyRule, WorkloadSelector } from './types.js';

/** One end of a pair, as policy sees it: a workload endpoint or a reserved peer. */
export type PolicyPeer = EndpointInfo | ReservedPeerRef;

/**
 * Whether traffic from `source` to `destination` must be authenticated. Rule order never
 * matters, so policy stays easy to reason about: a matching "disabled" rule is an explicit
 * operator opt-out and exempts the pair; otherwise a matching "required" rule requires it;
 * otherwise the default applies.
 */
export function decide(rules: readonly PolicyRule[], source: PolicyPeer, destination: PolicyPeer, defaultMode: PolicyMode): PolicyMode {
  let required = false;
  for (const rule of rules) {
    if (!matches(rule.source, source) || !matches(rule.destination, destination)) continue;
    if (rule.mode === 'disabled') return 'disabled';
    required = true;
  }
  return required ? 'required' : defaultMode;
}

export function matches(selector: WorkloadSelector, peer: PolicyPeer): boolean {
  if ('reserved' in peer) return selector.reserved === undefined ? isEmpty(selector) : selector.reserved === peer.reserved;
  if (selector.reserved !== undefined) return false;
  const endpoint = peer;
  if (selector.spiffeId !== undefined && !spiffeIdPattern(selector.spiffeId).test(endpoint.spiffeId)) return false;
  if (selector.namespace !== undefined && selector.namespace !== endpoint.namespace) return false;
  if (selector.serviceAccount !== undefined && selector.serviceAccount !== endpoint.serviceAccount) return false;
  for (const [key, value] of Object.entries(selector.labels ?? {})) {
    if (endpoint.labels?.[key] !== value) return false;
  }
  return true;
}

function isEmpty(selector: WorkloadSelector): boolean {
  return (
    selector.spiffeId === undefined &&
    selector.namespace === undefined &&
    selector.serviceAccount === undefined &&
    Object.keys(selector.labels ?? {}).length === 0
  );
}

const patternCache = new Map<string, RegExp>();

/** "*" matches within one path segment, "**" across segments; everything else is literal. */
export function spiffeIdPattern(pattern: string): RegExp {
  let regex = patternCache.get(pattern);
  if (!regex) {
    const body = pattern
      .split('**')
      .map((part) => part.split('*').map(escapeRegExp).join('[^/]*'))
      .join('.*');
    regex = new RegExp(`^${body}$`);
    patternCache.set(pattern, regex);
  }
  return regex;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
