import { pino, type Logger } from 'pino';

export type { Logger };

// Key material must never reach a log line. Anything logged under these names is replaced, as a
// safety net behind the rule that code does not log keys in the first place.
const REDACTED_PATHS = [
  'key',
  'privateKey',
  'private_key',
  'psk',
  'presharedKey',
  'token',
  'client_token',
  'jwt',
  'secret',
  '*.key',
  '*.privateKey',
  '*.private_key',
  '*.psk',
  '*.token',
  '*.jwt',
  '*.secret',
];

/** JSON logs on stderr; level from MESHAUTH_LOG_LEVEL (default info). */
export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino(
    {
      name: options.name ?? 'meshauth',
      level: options.level ?? process.env.MESHAUTH_LOG_LEVEL ?? 'info',
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      base: { pid: process.pid },
    },
    pino.destination(2),
  );
}

/** A logger that drops everything, for library callers and tests that assert on state instead. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
