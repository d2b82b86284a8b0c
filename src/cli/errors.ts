/** A bad invocation or unreadable input: the CLI exits 2 with the message, no stack trace. */
export class UsageError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UsageError';
  }
}
