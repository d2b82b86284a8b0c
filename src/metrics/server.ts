// The agent's HTTP endpoint for Prometheus and the kubelet: /metrics, /healthz, /readyz, and 404
// for everything else.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from '../util/logger.js';
import { silentLogger } from '../util/logger.js';
import { CALLBACK_TIMEOUT_MS, allowGetOnly, closeServer, createBoundedServer, listen, sendJson, sendText, withTimeout } from '../util/http-server.js';

/** Whether the agent can do its job (identities loaded, datapath attached, ...), and if not, why. */
export type Readiness = { ready: true } | { ready: false; reason: string };

export interface MetricsServerOptions {
  /** Address to listen on, e.g. '0.0.0.0' for scrapes from the cluster, '127.0.0.1' for local only. */
  host: string;
  /** 0 picks a free port (see `port` on the started server). */
  port: number;
  registry: Registry;
  /** Asked on every /readyz; it should be cheap. */
  readiness: () => Readiness | Promise<Readiness>;
  logger?: Logger;
}

export class MetricsServer {
  private constructor(
    private readonly server: Server,
    readonly host: string,
    readonly port: number,
  ) {}

  static async start(options: MetricsServerOptions): Promise<MetricsServer> {
    const logger = options.logger ?? silentLogger();
    const server = createBoundedServer(
      async (req, res, path) => {
        switch (path) {
          case '/metrics': {
            if (!allowGetOnly(req, res)) return;
            const text = await options.registry.metrics();
            sendText(res, 200, text, options.registry.contentType);
            return;
          }
          case '/healthz':
            // Answering at all proves the process is alive and its event loop turns; a blocked
            // loop shows up as the probe's own timeout.
            if (allowGetOnly(req, res)) sendText(res, 200, 'ok\n');
            return;
          case '/readyz': {
            if (!allowGetOnly(req, res)) return;
            const readiness = await checkReadiness(options.readiness);
            sendJson(res, readiness.ready ? 200 : 503, readiness);
            return;
          }
          default:
            sendText(res, 404, 'not found\n');
        }
      },
      (err) => logger.error({ err }, 'metrics server request failed'),
    );
    await listen(server, { host: options.host, port: options.port });
    const address = server.address() as AddressInfo;
    logger.info({ host: address.address, port: address.port }, 'metrics server listening');
    return new MetricsServer(server, address.address, address.port);
  }

  /** The base URL, e.g. http://127.0.0.1:9250 (IPv6 hosts in brackets). */
  get url(): string {
    return `http://${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`;
  }

  close(): Promise<void> {
    return closeServer(this.server);
  }
}

/** A readiness function that throws, hangs or answers nonsense means "not ready", with the reason. */
async function checkReadiness(readiness: MetricsServerOptions['readiness']): Promise<Readiness> {
  try {
    const result = await withTimeout(readiness, CALLBACK_TIMEOUT_MS, 'the readiness check');
    if (result.ready === true) return { ready: true };
    return { ready: false, reason: typeof result.reason === 'string' && result.reason ? result.reason : 'not ready' };
  } catch (err) {
    return { ready: false, reason: `readiness check failed: ${err instanceof Error ? err.message : String(err)}` };
  }
}
