import type { Command } from 'commander';
import { Agent } from '../agent/agent.js';
import { ConfigError, loadConfigFile, parseConfig, type Config } from '../config/config.js';
import { createLogger, type Logger } from '../util/logger.js';

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
      await runUntilSignalled(agent, load, logger);
    });
}

/** SIGTERM/SIGINT stop gracefully (the datapath keeps enforcing); SIGHUP re-reads the config. */
function runUntilSignalled(agent: Agent, load: () => Promise<Config>, logger: Logger): Promise<void> {
  return new Promise((resolve) => {
    const stop = (signal: string): void => {
      logger.info({ signal }, 'stopping; the datapath keeps enforcing');
      process.off('SIGHUP', reload);
      void agent.stop().finally(() => resolve());
    };
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
