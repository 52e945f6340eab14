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

/**
 * Ports the kernel never hands out on its own: below Linux's ephemeral range (32768–60999), where
 * the suite's thousands of outgoing connections and every `listen(0)` take theirs. A port picked by
 * `listen(0)` could be an outgoing socket's, or another file's, before the server under test bound
 * it (a topology failed on "port 40371 … is in use" in CI). Here a port is picked at random, checked
 * by binding it, and never handed out twice by one process.
 */
const PICK_FROM = 20_000;
const PICK_TO = 32_767;
const handedOut = new Set<number>();

/** A port that was free a moment ago and has nothing listening (what a user would pick for PORT). */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = PICK_FROM + Math.floor(Math.random() * (PICK_TO - PICK_FROM + 1));
    if (handedOut.has(port) || !(await canListen(port))) continue;
    handedOut.add(port);
    return port;
  }
  throw new Error(`no free port between ${PICK_FROM} and ${PICK_TO} after 200 tries`);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen({ port, host: '127.0.0.1', exclusive: true }, () => server.close(() => resolve(true)));
  });
}
