// tcpdump on an interface inside a namespace, writing a pcap file: what crossed the underlay.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { nsenterArgs } from '../netns/exec.js';

const CHILD_OPTIONS = { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', buffer: false, reject: false } as const;

export interface CaptureSummary {
  /** IPv4 packets captured. */
  ip: number;
  /** UDP to or from the WireGuard port. */
  wireguard: number;
  /** TCP to or from the meshauth handshake port (TLS 1.3). */
  handshake: number;
  /** Every other IP packet, as tcpdump prints it. */
  other: string[];
  /** A few WireGuard packets, as tcpdump prints them. */
  sample: string[];
}

export class Capture {
  private stopped?: Promise<void>;

  private constructor(
    private readonly child: ResultPromise<typeof CHILD_OPTIONS>,
    readonly file: string,
  ) {}

  /** Starts capturing whole packets; resolves once tcpdump is listening. */
  static async start(netns: string, iface: string, file: string): Promise<Capture> {
    // -Z root: Debian's tcpdump would drop to its own user before opening the output file.
    const child = execa('nsenter', nsenterArgs(netns, 'tcpdump', ['-i', iface, '-n', '--immediate-mode', '-U', '-s', '0', '-Z', 'root', '-w', file]), CHILD_OPTIONS);
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (stderr.includes('listening on')) resolve();
      });
      void child.then(() => reject(new Error(`tcpdump on ${netns}/${iface} exited: ${stderr.trim()}`)));
    });
    return new Capture(child, file);
  }

  /** Stops the capture (after settleMs, so packets just sent are written) and returns the pcap. */
  async stop(settleMs = 300): Promise<Buffer> {
    this.stopped ??= (async () => {
      await sleep(settleMs);
      this.child.kill('SIGINT');
      await this.child;
    })();
    await this.stopped;
    return existsSync(this.file) ? readFile(this.file) : Buffer.alloc(0);
  }

  /** Counts the captured packets by kind (stops the capture first). */
  async summarize(ports: { wireguard: number; handshake: number }): Promise<CaptureSummary> {
    await this.stop();
    const lines = async (filter: string) => {
      const { stdout } = await execa('tcpdump', ['-n', '-r', this.file, filter], { reject: false, stderr: 'ignore' });
      return stdout.split('\n').filter(Boolean);
    };
    const known = `udp port ${ports.wireguard} or tcp port ${ports.handshake}`;
    const [ip, wireguard, handshake, other] = await Promise.all([
      lines('ip'),
      lines(`udp port ${ports.wireguard}`),
      lines(`tcp port ${ports.handshake}`),
      lines(`ip and not (${known})`),
    ]);
    return { ip: ip.length, wireguard: wireguard.length, handshake: handshake.length, other, sample: wireguard.slice(0, 3) };
  }
}
