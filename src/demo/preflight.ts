// What the demo needs from the machine, checked before anything is created, so that a missing
// tool is one clear line instead of a failure halfway through.
import { existsSync } from 'node:fs';
import { execa } from 'execa';

const TOOLS: readonly { command: string; args: string[]; package: string }[] = [
  { command: 'ip', args: ['-V'], package: 'iproute2' },
  { command: 'tc', args: ['-V'], package: 'iproute2' },
  { command: 'nsenter', args: ['--version'], package: 'util-linux' },
  { command: 'setpriv', args: ['--version'], package: 'util-linux' },
  { command: 'bpftool', args: ['version'], package: 'bpftool' },
  { command: 'wg', args: ['--version'], package: 'wireguard-tools' },
  { command: 'tcpdump', args: ['--version'], package: 'tcpdump' },
  { command: 'ping', args: ['-V'], package: 'iputils-ping' },
];

/** Problems that keep the demo from running; empty when it can. */
export async function preflight(bpfObject: string): Promise<string[]> {
  const problems: string[] = [];
  if (process.getuid?.() !== 0) problems.push('the demo needs root (network namespaces, eBPF, WireGuard): run it with sudo');
  if (!existsSync(bpfObject)) problems.push(`the compiled gate ${bpfObject} is missing: run \`npm run build:bpf\``);
  const missing = await Promise.all(
    TOOLS.map(async (tool) => ((await execa(tool.command, tool.args, { reject: false })).failed ? tool : undefined)),
  );
  for (const tool of missing) if (tool) problems.push(`${tool.command} is not installed (Debian package ${tool.package})`);
  // The kernel module is used when present; otherwise the agent falls back to wireguard-go.
  const hasWireguardGo = !(await execa('wireguard-go', ['--version'], { reject: false })).failed;
  if (!hasWireguardGo && !existsSync('/sys/module/wireguard')) {
    const probe = await execa('modprobe', ['-n', 'wireguard'], { reject: false });
    if (probe.failed) problems.push('neither the wireguard kernel module nor wireguard-go is available (Debian package wireguard-go)');
  }
  return problems;
}
