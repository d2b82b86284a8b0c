// `meshauth datapath install|uninstall|status`: the eBPF gate's lifecycle from the command line, for
// operators and for tearing a node down. The agent itself uses src/datapath/gate/datapath.ts directly.
import { Option, type Command } from 'commander';
import { UsageError } from './errors.js';
import { Datapath } from '../datapath/gate/datapath.js';
import { attachedPrograms, type AttachMode, type AttachPreference, type Hook } from '../datapath/gate/hooks.js';
import { interfaceExists } from '../datapath/gate/loader.js';
import { DEFAULT_PIN_DIR, PinLayout, validateInterface, type WorkloadInterface } from '../datapath/gate/pin-layout.js';

interface PinDirOption {
  pinDir: string;
}

export function registerDatapathCommands(program: Command): void {
  const datapath = program.command('datapath').description('Install, inspect or remove the eBPF datapath gate (root)');
  const pinDirHelp = 'bpffs directory holding the gate\'s maps and programs';

  datapath
    .command('install')
    .description(
      'Attach the gate to workload interfaces (and again to every interface it was attached to); ' +
        'existing maps and their auth entries are kept',
    )
    .option('--pin-dir <dir>', pinDirHelp, DEFAULT_PIN_DIR)
    .option('--interface <name[@netns]>', 'host-side workload interface, optionally in a network namespace; repeatable', collect, [])
    .option('--object <file>', 'compiled gate (default: bpf/gate.bpf.o of this package)')
    .addOption(
      new Option('--attach <how>', 'tcx (Linux 6.6+), tc (cls_bpf on clsact), or auto: tcx where the kernel has it')
        .choices(['auto', 'tcx', 'tc'])
        .default('auto'),
    )
    .action(async (options: PinDirOption & { interface: string[]; object?: string; attach: AttachPreference }) => {
      const interfaces = options.interface.map(parseInterface);
      await withDatapath({ pinDir: options.pinDir, attach: options.attach, ...(options.object ? { objectPath: options.object } : {}) }, (dp) =>
        dp.install({ interfaces }),
      );
    });

  datapath
    .command('uninstall')
    .description('Detach the gate from every interface it was attached to and remove its pin directory')
    .option('--pin-dir <dir>', pinDirHelp, DEFAULT_PIN_DIR)
    .action(async (options: PinDirOption) => {
      await Datapath.uninstall({ pinDir: checkPinDir(options.pinDir) });
    });

  datapath
    .command('status')
    .description('Print the attached interfaces (and how: tcx or tc), config, counters and number of auth entries as JSON')
    .option('--pin-dir <dir>', pinDirHelp, DEFAULT_PIN_DIR)
    .action(async (options: PinDirOption) => {
      await withDatapath({ pinDir: options.pinDir }, async (dp) => {
        const status = {
          pinDir: dp.pinDir,
          interfaces: await Promise.all((await dp.attachedInterfaces()).map(async (iface) => ({ ...iface, hooks: await hooksOf(dp.layout, iface) }))),
          config: dp.config(),
          counters: dp.counters(),
          authEntries: dp.dumpAuth().length,
        };
        console.log(JSON.stringify(status, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value), 2));
      });
    });
}

/** How the gate sits on each hook of an interface: tcx, tc, none (not attached) or gone (no such interface). */
async function hooksOf(layout: PinLayout, iface: WorkloadInterface): Promise<Record<Hook, AttachMode | 'none' | 'gone'>> {
  const gone = { ingress: 'gone', egress: 'gone' } as const;
  if (!(await interfaceExists(iface))) return gone;
  try {
    const { ingress, egress } = await attachedPrograms(layout, iface);
    return { ingress: ingress?.via ?? 'none', egress: egress?.via ?? 'none' };
  } catch (err) {
    if (await interfaceExists(iface)) throw err;
    return gone; // it went away while we looked
  }
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function parseInterface(text: string): WorkloadInterface {
  const at = text.indexOf('@');
  const iface = at === -1 ? { name: text } : { name: text.slice(0, at), netns: text.slice(at + 1) };
  try {
    validateInterface(iface);
  } catch (err) {
    throw new UsageError(`--interface ${text}: ${(err as Error).message}`);
  }
  return iface;
}

function checkPinDir(dir: string): string {
  try {
    return new PinLayout(dir).root;
  } catch (err) {
    throw new UsageError(`--pin-dir: ${(err as Error).message}`);
  }
}

async function withDatapath(
  options: { pinDir: string; objectPath?: string; attach?: AttachPreference },
  work: (datapath: Datapath) => Promise<void>,
): Promise<void> {
  const datapath = await Datapath.open({ ...options, pinDir: checkPinDir(options.pinDir) });
  try {
    await work(datapath);
  } finally {
    datapath.close();
  }
}
