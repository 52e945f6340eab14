/**
 * The topology's ports, checked before anything starts: a port another process holds must stop
 * `npm start` with one line naming the variable that moves it, not with a workerd fatal or an
 * EADDRINUSE after the embedded database has already been opened.
 */
import net from 'node:net';
import { StartupError } from '../runtime/node.js';

/** A port the topology will listen on, and the environment variable that chooses it. */
export interface PortClaim {
  port: number;
  host: string;
  variable: string;
}

/**
 * Fails with one line when two claims name the same port or a port cannot be bound now.
 * Port 0 (any free port) is never checked.
 * @example await checkPortsFree([{ port: 8788, host: '127.0.0.1', variable: 'NODE_PORT' }]);
 */
export async function checkPortsFree(claims: PortClaim[]): Promise<void> {
  const fixed = claims.filter((c) => c.port !== 0);
  for (const [i, claim] of fixed.entries()) {
    const twin = fixed.slice(0, i).find((c) => c.port === claim.port);
    if (twin) throw new StartupError(`${twin.variable} and ${claim.variable} are both ${claim.port}; set one of them to another port`);
  }
  for (const claim of fixed) await tryListen(claim);
}

/** Binds and releases the port: the only reliable test of "can we listen here now". */
function tryListen({ port, host, variable }: PortClaim): Promise<void> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'is in use' : `cannot be used (${err.code ?? err.name})`;
      reject(new StartupError(`port ${port} on ${host} ${why}; set ${variable} to use another`));
    });
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve()));
  });
}

/** A port nothing listens on right now, for a part that cannot be given port 0 (wrangler dev). */
export async function freePort(host: string): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: 0, host }, () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
