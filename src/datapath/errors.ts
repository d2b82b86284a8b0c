/** A datapath operation failed: a tool, a pinned object, a kernel call. The message says which. */
export class DatapathError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DatapathError';
  }
}
