/**
 * The protocol-level CancelRequest, for any pg-compatible client (node-postgres, and the Neon
 * driver's WebSocket client, whose sockets go through its proxy): the backend's pid and secret
 * key sent on a fresh connection — no session, no auth, outside any pool's max, and forwarded by
 * PgBouncer and Neon's pooler. The server then fails the running statement with 57014.
 */
import type { Log } from '../../log/logger.js';
import { describeError } from '../../errors.js';

/**
 * How long after a CancelRequest a statement may still hold its connection before the socket is
 * cut on our side: the cancel travels over the network too, and a silent network only the cut ends.
 */
export const CANCEL_GRACE_MS = 1_000;

/** A connected client's identity on the server (set during its startup; not in pg's types). */
interface Backend {
  processID?: number;
  secretKey?: number;
}

/** The parts of pg's Client and Connection a CancelRequest needs (not in pg's types). */
interface CancelSender {
  host: string;
  port: number;
  connection: {
    on(event: 'error', fn: (err: unknown) => void): void;
    once(event: 'connect', fn: () => void): void;
    connect(port: number, host: string): void;
    cancel(processID: number | undefined, secretKey: number | undefined): void;
  };
}

export function sendCancelRequest(
  Client: new (config: { connectionString: string }) => unknown,
  connectionString: string,
  target: unknown,
  log: Log = () => {},
): void {
  const { processID, secretKey } = target as Backend;
  if (processID === undefined) return;
  const sender = new Client({ connectionString }) as CancelSender;
  const con = sender.connection;
  con.on('error', (err) =>
    log(
      `poolgate: a cancel request failed (${describeError(err)})`,
      { event: 'connection.cancel_failed', error: describeError(err) },
      'warn',
    ),
  );
  con.once('connect', () => con.cancel(processID, secretKey));
  con.connect(sender.port, sender.host);
}
