// The `ip xfrm` command lines the IPsec transport feeds to `ip -batch -`, and the parsers for
// what `ip xfrm state list nokeys` / `ip xfrm policy list` print (iproute2 has no JSON output
// for xfrm). Every value interpolated into a line was validated by the caller; keys appear only
// in state lines, which go to ip's stdin and nowhere else.

/** meshauth tags its states and policies with reqids in [REQID_BASE, REQID_BASE + 0xffff]
 *  ("ma" in the top half): it lists, adopts and removes only those. */
export const REQID_BASE = 0x6d61_0000;
export const REQID_LAST = REQID_BASE + 0xffff;

export function isMeshauthReqid(reqid: number): boolean {
  return reqid >= REQID_BASE && reqid <= REQID_LAST;
}

/** An SA as the kernel identifies it: destination, SPI (and protocol, always ESP here). */
export interface SaId {
  src: string;
  dst: string;
  spi: number;
}

export interface Lifetime {
  softSeconds: number;
  hardSeconds: number;
  softBytes: bigint;
  hardBytes: bigint;
  softPackets: bigint;
  hardPackets: bigint;
}

export type PolicyDirection = 'out' | 'in' | 'fwd';

export interface PolicySpec {
  /** Selector source and destination CIDRs (canonical). */
  src: string;
  dst: string;
  dir: PolicyDirection;
  /** Tunnel endpoints of the template and the reqid binding it to the peer's states. */
  tmplSrc: string;
  tmplDst: string;
  reqid: number;
}

const hexSpi = (spi: number) => `0x${spi.toString(16).padStart(8, '0')}`;

/** An ESP tunnel-mode state with rfc4106(gcm(aes)) (ICV 128 bits) and the kernel lifetimes. */
export function stateAddLine(sa: SaId, reqid: number, key: Buffer, lifetime: Lifetime): string {
  return [
    `xfrm state add src ${sa.src} dst ${sa.dst} proto esp spi ${hexSpi(sa.spi)} reqid ${reqid} mode tunnel`,
    // esn: 64-bit sequence numbers, so a busy SA never runs out (2^32 packets last ~1.5 h at
    // 10 Gbit/s); af-unspec: the tunnel may carry the other family (IPv6 pods over IPv4 nodes).
    'replay-window 128 flag esn af-unspec',
    `aead rfc4106(gcm(aes)) 0x${key.toString('hex')} 128`,
    `limit time-soft ${lifetime.softSeconds} limit time-hard ${lifetime.hardSeconds}`,
    `limit byte-soft ${lifetime.softBytes} limit byte-hard ${lifetime.hardBytes}`,
    `limit packet-soft ${lifetime.softPackets} limit packet-hard ${lifetime.hardPackets}`,
  ].join(' ');
}

export function stateDeleteLine(sa: SaId): string {
  return `xfrm state delete src ${sa.src} dst ${sa.dst} proto esp spi ${hexSpi(sa.spi)}`;
}

/** `update` adds the policy or replaces the one with the same selector and direction. */
export function policyUpdateLine(policy: PolicySpec, priority: number): string {
  return (
    `xfrm policy update src ${policy.src} dst ${policy.dst} dir ${policy.dir} priority ${priority} ` +
    `tmpl src ${policy.tmplSrc} dst ${policy.tmplDst} proto esp reqid ${policy.reqid} mode tunnel`
  );
}

export function policyDeleteLine(policy: Pick<PolicySpec, 'src' | 'dst' | 'dir'>): string {
  return `xfrm policy delete src ${policy.src} dst ${policy.dst} dir ${policy.dir}`;
}

/** Identity of a policy in the kernel: selector and direction. */
export function policyKey(policy: Pick<PolicySpec, 'src' | 'dst' | 'dir'>): string {
  return `${policy.dir} ${policy.src} ${policy.dst}`;
}

export interface ListedState extends SaId {
  reqid: number;
}

/** Splits ip's listing into blocks: a block starts with an unindented line. */
export function listingBlocks(text: string): string[][] {
  const result: string[][] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    if (!/^\s/.test(line) || result.length === 0) result.push([line.trim()]);
    else result[result.length - 1]!.push(line.trim());
  }
  return result;
}

/** ESP states from `ip xfrm state list nokeys`. */
export function parseStates(text: string): ListedState[] {
  const states: ListedState[] = [];
  for (const block of listingBlocks(text)) {
    const head = /^src (\S+) dst (\S+)$/.exec(block[0]!);
    const id = block.map((line) => /^proto esp spi 0x([0-9a-f]+)(?:\(\d+\))? reqid (\d+)/.exec(line)).find(Boolean);
    if (head && id) states.push({ src: head[1]!, dst: head[2]!, spi: parseInt(id[1]!, 16), reqid: Number(id[2]) });
  }
  return states;
}

/** Every SPI in a state listing, of any protocol (so an allocated SPI is never in use). */
export function parseAllSpis(text: string): Set<number> {
  return new Set([...text.matchAll(/\bspi 0x([0-9a-f]+)/g)].map((m) => parseInt(m[1]!, 16)));
}

export interface ListedPolicy {
  src: string;
  dst: string;
  dir: PolicyDirection;
  /** reqids of the templates. */
  reqids: number[];
  /** Carries a mark or an interface id, or selects ports or protocols: never meshauth's. */
  qualified: boolean;
}

/** Policies from `ip xfrm policy list` (socket policies and unknown directions skipped). */
export function parsePolicies(text: string): ListedPolicy[] {
  const policies: ListedPolicy[] = [];
  for (const block of listingBlocks(text)) {
    const selector = /^src (\S+) dst (\S+)(.*)$/.exec(block[0]!);
    const dir = block.map((line) => /^dir (out|in|fwd)\b/.exec(line)).find(Boolean);
    if (!selector || !dir) continue;
    const reqids = block.flatMap((line) => [.../\breqid (\d+)/.exec(line) ?? []].slice(1).map(Number));
    const qualified = selector[3]!.trim() !== '' || block.some((line) => /^(mark|if_id)\b/.test(line));
    policies.push({ src: selector[1]!, dst: selector[2]!, dir: dir[1] as PolicyDirection, reqids, qualified });
  }
  return policies;
}
