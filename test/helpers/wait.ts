/**
 * Waiting helpers with no poolgate imports (the package tests load nothing of src/ through them):
 * polling for a condition, and a port that was free a moment ago.
 */
import { createServer } from 'node:net';

/** Polls `check` every `intervalMs` until it returns truthy; throws after `timeoutMs`, with the last error. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  { timeoutMs = 5_000, intervalMs = 20, what = 'condition' } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: string | undefined;
  for (;;) {
    try {
      const value = await check();
      if (value) return value;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last})` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** A port that was free a moment ago and has nothing listening (what a user would pick for PORT). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
