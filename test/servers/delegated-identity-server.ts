// A SPIRE Delegated Identity API server for tests, faithful to SPIRE's agent
// (pkg/agent/api/delegatedidentity/v1/service.go): SubscribeToX509SVIDs resolves the request's
// selectors to the registration entries whose selectors are all among them (SPIRE's cache
// matching), sends their SVIDs at once and again on every change (an empty list when nothing
// matches); SubscribeToX509Bundles sends every bundle keyed by the trust domain's SPIFFE ID
// (spiffe://td), as SPIRE does. A caller that is not an authorized delegate is simulated with
// fail(PERMISSION_DENIED). SVIDs are real X509-SVIDs issued by a DevCa.
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { DevCa } from '../../src/identity/dev-ca.js';
import { SpiffeId } from '../../src/identity/spiffe-id.js';
import type { RawSvid } from '../../src/identity/types.js';
import {
  delegatedIdentityDefinition,
  type Selector,
  type SubscribeToX509BundlesResponse,
  type SubscribeToX509SvidsRequest,
  type SubscribeToX509SvidsResponse,
} from '../../src/identity/providers/grpc-protos.js';
import type { ListenOptions, StreamCall } from './grpc-test-server.js';
import { IdentityApiServer } from './identity-api-server.js';

export interface RegistrationEntry {
  id: string;
  selectors: Selector[];
  hint?: string;
}

export interface DelegatedIdentityServerOptions extends ListenOptions {
  ca: DevCa;
  entries: RegistrationEntry[];
  /** CAs of foreign trust domains. */
  federated?: DevCa[];
  /** How bundle map keys are written: SPIRE's spiffe://td (default) or the bare name its docs describe. */
  bundleKeys?: 'spiffe-id' | 'name';
  ttlMs?: number;
}

type DelegatedMethod = 'SubscribeToX509SVIDs' | 'SubscribeToX509Bundles';

export class DelegatedIdentityServer extends IdentityApiServer<DelegatedMethod, { method: DelegatedMethod; selectors: string[] }> {
  private issued = new Map<RegistrationEntry, RawSvid>();
  private readonly subscriptions = new Map<StreamCall, string[]>();

  private constructor(private readonly options: DelegatedIdentityServerOptions) {
    super(options.federated);
  }

  static async start(options: DelegatedIdentityServerOptions): Promise<DelegatedIdentityServer> {
    const server = new DelegatedIdentityServer(options);
    await server.listen(
      delegatedIdentityDefinition().service,
      {
        SubscribeToX509SVIDs: (call: StreamCall) => server.subscribeSvids(call),
        SubscribeToX509Bundles: (call: StreamCall) => server.subscribeBundles(call),
      },
      options,
    );
    await server.setEntries(options.entries);
    return server;
  }

  /** The selector sets of the open SVID subscriptions, each as sorted "type:value" strings. */
  openSubscriptions(): string[][] {
    const open = new Set(this.transport.streams('SubscribeToX509SVIDs'));
    return [...this.subscriptions].filter(([call]) => open.has(call)).map(([, selectors]) => selectors);
  }

  /** Replaces the registration entries; new entries get SVIDs, and every subscriber its new state. */
  async setEntries(entries: RegistrationEntry[]): Promise<void> {
    const next = new Map<RegistrationEntry, RawSvid>();
    for (const entry of entries) next.set(entry, this.issued.get(entry) ?? (await this.issue(entry)));
    this.issued = next;
    this.push();
  }

  /** Re-issues every SVID and pushes the new state. */
  async rotate(): Promise<void> {
    for (const entry of this.issued.keys()) this.issued.set(entry, await this.issue(entry));
    this.push();
  }

  override restart(): Promise<void> {
    this.subscriptions.clear();
    return super.restart();
  }

  private subscribeSvids(call: StreamCall): void {
    const request = call.request as SubscribeToX509SvidsRequest;
    const selectors = request.selectors.map((selector) => `${selector.type}:${selector.value}`).sort();
    this.calls.push({ method: 'SubscribeToX509SVIDs', selectors });
    const invalid =
      request.selectors.length > 0 && request.pid !== 0
        ? 'cannot specify both selectors and pid'
        : request.selectors.some((selector) => selector.type === '' || selector.value === '')
          ? 'could not parse provided selectors'
          : request.selectors.length === 0
            ? 'this test server resolves selectors only, not PIDs'
            : undefined;
    if (invalid) {
      call.emit('error', Object.assign(new Error(invalid), { code: grpc.status.INVALID_ARGUMENT }));
      return;
    }
    if (!this.transport.accept(call, 'SubscribeToX509SVIDs')) return;
    this.subscriptions.set(call, selectors);
    call.on('cancelled', () => this.subscriptions.delete(call));
    call.write(this.svidsFor(selectors));
  }

  private subscribeBundles(call: StreamCall): void {
    this.calls.push({ method: 'SubscribeToX509Bundles', selectors: [] });
    if (!this.transport.accept(call, 'SubscribeToX509Bundles')) return;
    call.write(this.bundlesResponse());
  }

  protected push(): void {
    for (const call of this.transport.streams('SubscribeToX509SVIDs')) call.write(this.svidsFor(this.subscriptions.get(call) ?? []));
    for (const call of this.transport.streams('SubscribeToX509Bundles')) call.write(this.bundlesResponse());
  }

  /** SPIRE's matching: an entry applies when all of its selectors are among the caller's. */
  private svidsFor(selectors: string[]): SubscribeToX509SvidsResponse {
    const x509_svids = [...this.issued]
      .filter(([entry]) => entry.selectors.every((selector) => selectors.includes(`${selector.type}:${selector.value}`)))
      .map(([entry, svid]) => {
        const id = SpiffeId.parse(entry.id);
        return {
          x509_svid: {
            cert_chain: svid.chain,
            id: { trust_domain: id.trustDomain, path: id.path },
            expires_at: Math.floor(new Date(new X509Certificate(svid.chain[0]!).validTo).getTime() / 1000),
            hint: entry.hint ?? '',
          },
          x509_svid_key: svid.key,
        };
      });
    return { x509_svids, federates_with: this.federated.map((ca) => `spiffe://${ca.trustDomain}`) };
  }

  private bundlesResponse(): SubscribeToX509BundlesResponse {
    const key = (trustDomain: string) => (this.options.bundleKeys === 'name' ? trustDomain : `spiffe://${trustDomain}`);
    const cas = [this.options.ca, ...this.federated];
    return { ca_certificates: Object.fromEntries(cas.map((ca) => [key(ca.trustDomain), Buffer.concat(ca.bundle())])) };
  }

  private issue(entry: RegistrationEntry): Promise<RawSvid> {
    return this.options.ca.issue({ id: entry.id, ttlMs: this.options.ttlMs ?? 3_600_000 });
  }
}
