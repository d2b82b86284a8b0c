import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { Agent } from '../agent/agent.js';
import { ConfigError, loadConfigFile, parseConfig, type Config } from '../config/config.js';
import { createLogger, type Logger } from '../util/logger.js';
import { watchConfigFile } from '../config/watch.js';

export function registerAgentCommand(program: Command): void {
  program
    .command('agent')
    .description('Run the node agent (without --config: the embedded defaults with the dev CA)')
    .option('--config <file>', 'YAML configuration file')
    .action(async (options: { config?: string }) => {
      const logger = createLogger();
      const load = (): Promise<Config> => (options.config ? loadConfigFile(options.config) : Promise.resolve(parseConfig({}, 'embedded defaults')));
      const config = await load();
      const agent = await Agent.start(config, { logger });
      await runUntilSignalled(agent, load, logger, options.config);
    });
}

/** SIGTERM/SIGINT stop gracefully (the datapath keeps enforcing); SIGHUP, or a change of the
 *  config file, re-reads the config. */
function runUntilSignalled(agent: Agent, load: () => Promise<Config>, logger: Logger, configFile: string | undefined): Promise<void> {
  return new Promise((resolve) => {
    let lastText: string | undefined;
    const stopWatching = configFile ? watchConfigFile(configFile, () => void reloadIfChanged(configFile)) : () => {};
    const stop = (signal: string): void => {
      logger.info({ signal }, 'stopping; the datapath keeps enforcing');
      process.off('SIGHUP', reload);
      stopWatching();
      void agent.stop().finally(() => resolve());
    };
    // A watch event without a change of content (a touch, an unrelated rename) reloads nothing.
    const reloadIfChanged = async (file: string): Promise<void> => {
      const text = await readFile(file, 'utf8').catch(() => undefined);
      if (text === undefined || text === lastText) return;
      lastText = text;
      logger.info({ file }, 'config file changed');
      reload();
    };
    if (configFile) void readFile(configFile, 'utf8').then((text) => (lastText = text), () => undefined);
    const reload = (): void => {
      load().then(
        (config) => agent.reload(config),
        // A bad file is rejected with a clear error and the running state is kept.
        (err: unknown) => logger.error({ err: err instanceof ConfigError ? err.message : String(err) }, 'configuration reload rejected; keeping the running state'),
      );
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', reload);
  });
}
