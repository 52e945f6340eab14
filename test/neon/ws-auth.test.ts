/**
 * The local Neon proxy does each WebSocket session's startup itself, as Neon's proxy does
 * (src/local/neon-proxy/auth.ts): the client hands over its password in cleartext, pipelined or
 * when asked, and the proxy answers whatever Postgres asks for. Both driver majors, pipelined
 * and not, against one private cluster whose pg_hba.conf has a user per method: trust, password
 * (cleartext), md5 and scram-sha-256. A wrong password ends in Postgres's own ErrorResponse and a
 * closed socket; SSLRequest and CancelRequest still work through the WebSocket; a database the
 * proxy cannot reach fails the upgrade, so a pipelined connect still fails at connect.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import * as neonCurrent from '@neondatabase/serverless';
import * as neonPrevious from 'neon-serverless-0-10';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { sendCancelRequest } from '../../src/db/connectors/cancel.js';
import { neonWsConnector, type NeonProxySettings } from '../../src/db/connectors/neon.js';
import { md5Password, ScramClient } from '../../src/local/neon-proxy/auth.js';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import { openRawSocket, pgMessage, refusedUpgradeStatus, startupMessage, useNeonProxy } from '../helpers/neon.js';
import { waitFor } from '../helpers/wait.js';
import {
  AUTH_ROLES,
  privatePostgresAvailable,
  startPrivatePostgres,
  useAuthMethods,
  type PrivatePostgres,
} from '../helpers/private-postgres.js';

type NeonConfigLike = NeonProxySettings & { webSocketConstructor: unknown };

const drivers = [
  { label: '@neondatabase/serverless 1.x', neonConfig: neonCurrent.neonConfig as NeonConfigLike, Client: neonCurrent.Client },
  {
    label: '@neondatabase/serverless 0.10.x',
    neonConfig: neonPrevious.neonConfig as NeonConfigLike,
    Client: neonPrevious.Client as unknown as typeof neonCurrent.Client,
  },
];

const SUPER_PASSWORD = 'super secret ✓';
/** One login role per authentication method (useAuthMethods); `password` is what it must send. */
const methods = [
  { method: 'trust', ...AUTH_ROLES.trust },
  { method: 'password (cleartext)', ...AUTH_ROLES.password },
  { method: 'md5', ...AUTH_ROLES.md5 },
  { method: 'scram-sha-256', user: 'postgres', password: SUPER_PASSWORD },
] as const;

let cluster: PrivatePostgres | undefined;
let proxy: NeonProxy | undefined;
const proxyLog: string[] = [];

const urlFor = (user: string, password?: string) =>
  `postgres://${user}${password === undefined ? '' : `:${encodeURIComponent(password)}`}@127.0.0.1:${cluster!.port}/postgres`;

/** Whether a statement carrying `marker` is running on the cluster. */
async function isRunning(marker: string): Promise<boolean> {
  const admin = new pg.Client({ connectionString: urlFor('postgres', SUPER_PASSWORD) });
  await admin.connect();
  try {
    const { rowCount } = await admin.query(
      `SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()`,
      [`%${marker}%`],
    );
    return (rowCount ?? 0) > 0;
  } finally {
    await admin.end();
  }
}

beforeAll(async () => {
  if (!privatePostgresAvailable) return;
  cluster = await startPrivatePostgres({ password: SUPER_PASSWORD });
  await useAuthMethods(cluster, SUPER_PASSWORD);
  proxy = await startNeonProxy({ databaseUrls: [cluster.url()], port: 0, log: (line) => proxyLog.push(line) });
  for (const driver of drivers) useNeonProxy(proxy, driver.neonConfig);
});

afterAll(async () => {
  await proxy?.close();
  await cluster?.destroy();
});

afterEach(() => {
  for (const driver of drivers) driver.neonConfig.pipelineConnect = 'password';
});

const skipReason = privatePostgresAvailable ? undefined : 'needs the PostgreSQL 15 binaries and root or the postgres user';

describe.skipIf(skipReason !== undefined)('the cluster', () => {
  it.each([
    ['trust_user', undefined, 'none'],
    ['plain_user', 'plain-pass', 'authenticationCleartextPassword'],
    ['md5_user', 'md5 pass', 'authenticationMD5Password'],
    ['postgres', SUPER_PASSWORD, 'authenticationSASL'],
  ])('asks %s for its method (seen directly with pg)', async (user, password, expected) => {
    const client = new pg.Client({ connectionString: urlFor(user, password) });
    const asked: string[] = [];
    const connection = (client as unknown as { connection: { on(event: string, fn: () => void): void } }).connection;
    for (const event of ['authenticationCleartextPassword', 'authenticationMD5Password', 'authenticationSASL'])
      connection.on(event, () => asked.push(event));
    await client.connect();
    await client.end();
    expect(asked).toEqual(expected === 'none' ? [] : [expected]);
  });
});

describe.skipIf(skipReason !== undefined).each(drivers)('$label', (driver) => {
  describe.each(methods)('$method', ({ user, password }) => {
    it.each([
      ['pipelined (startup, password and query in one write)', 'password' as const],
      ['not pipelined (the password when asked)', false as const],
    ])('%s: connects, queries, and the backend key is relayed', async (_name, pipelineConnect) => {
      driver.neonConfig.pipelineConnect = pipelineConnect;
      const client = new driver.Client({ connectionString: urlFor(user, password) });
      client.on('error', () => {});
      await client.connect();
      try {
        const { rows } = await client.query('SELECT current_user AS who, $1::int + 1 AS n', [41]);
        expect(rows).toEqual([{ who: user, n: 42 }]);
        const pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
        expect((client as unknown as { processID: number }).processID).toBe(pid);
      } finally {
        await client.end();
      }
    });

    // Under trust nothing asks for a password, so no password is wrong: the case exists for the others.
    if (password !== undefined)
      it('a wrong password: Postgres’s 28P01 reaches the client and the socket closes', async () => {
        for (const pipelineConnect of ['password', false] as const) {
          driver.neonConfig.pipelineConnect = pipelineConnect;
          const client = new driver.Client({ connectionString: urlFor(user, 'wrong') });
          const ended = new Promise<void>((resolve) => client.on('end', resolve));
          client.on('error', () => {});
          // Pipelined, connect() resolves at once and the first query carries the failure.
          const err = (await client
            .connect()
            .then(() => client.query('SELECT 1'))
            .catch((e: unknown) => e)) as { code?: string; message?: string };
          expect(err.code, `${pipelineConnect}: ${err.message}`).toBe('28P01');
          expect(err.message).toMatch(/authentication failed for user/);
          await ended;
        }
        expect(proxyLog.some((l) => l.includes('startup refused: password authentication failed'))).toBe(true);
        expect(proxyLog.join('\n')).not.toContain('wrong');
      });
  });

  it('a CancelRequest sent through the WebSocket stops a statement (SCRAM session)', async () => {
    const url = urlFor('postgres', SUPER_PASSWORD);
    const client = new driver.Client({ connectionString: url });
    client.on('error', () => {});
    await client.connect();
    try {
      // Sent once the statement runs (a cancel that arrives before it is lost); a sleep that
      // outlives the test, so 57014 at all means the cancel stopped it.
      const marker = `ws_cancel_${randomBytes(3).toString('hex')}`;
      const sleeping = client.query(`SELECT pg_sleep(600) /* ${marker} */`).catch((e: unknown) => e);
      await waitFor(() => isRunning(marker), { timeoutMs: 20_000, what: 'the sleep to run' });
      sendCancelRequest(driver.Client, url, client);
      expect(((await sleeping) as { code?: string }).code).toBe('57014');
    } finally {
      await client.end();
    }
  });
});

describe.skipIf(skipReason !== undefined)('the startup, byte by byte', () => {
  it('an SSLRequest is answered N, and the startup goes on in plain text', async () => {
    const { ws, received } = await openRawSocket(proxy!, `127.0.0.1:${cluster!.port}`);
    const ssl = Buffer.alloc(8);
    ssl.writeInt32BE(8, 0);
    ssl.writeInt32BE(80877103, 4);
    ws.send(ssl);
    await until(() => received.length > 0);
    expect(Buffer.concat(received).toString()).toBe('N');
    received.length = 0;
    // Startup and the password together, as the driver pipelines them.
    ws.send(Buffer.concat([startupMessage('postgres', 'postgres'), pgMessage('p', `${SUPER_PASSWORD}\0`)]));
    await until(() => Buffer.concat(received).includes(Buffer.from([0x5a, 0, 0, 0, 5])));
    const types = messageTypes(Buffer.concat(received));
    // The password was pipelined, so the proxy asked for none: Postgres's AuthenticationOk … ReadyForQuery.
    expect(types[0]).toBe('R');
    expect(types.filter((t) => t === 'R')).toHaveLength(1);
    expect(types).toContain('K');
    expect(types.at(-1)).toBe('Z');
    ws.close();
  });

  it('a client that sends no password to a server that wants one gets a FATAL 28P01 from the proxy', async () => {
    const { ws, received } = await openRawSocket(proxy!, `127.0.0.1:${cluster!.port}`);
    const closed = new Promise<number>((resolve) => ws.on('close', resolve));
    ws.send(Buffer.concat([startupMessage('postgres', 'postgres'), pgMessage('Q', 'SELECT 1\0')]));
    expect(await closed).toBe(1000);
    const all = Buffer.concat(received);
    // Postgres asked for a password and none came: no request to a client that did not wait for one, just the refusal.
    expect(messageTypes(all)).toEqual(['E']);
    expect(all.toString()).toContain('C28P01');
  });
});

describe('a database the proxy cannot reach', () => {
  it('is a failed upgrade (502), so even a pipelined connect fails at connect, as 08006', async () => {
    const lonely = await startNeonProxy({ databaseUrls: ['postgres://postgres@127.0.0.1:1/postgres'], port: 0 });
    try {
      const status = await refusedUpgradeStatus(lonely, '127.0.0.1:1');
      expect(status).toBe(502);
      // The connector's acquire() is what the core's breaker and connect retries see.
      useNeonProxy(lonely, neonCurrent.neonConfig);
      const source = neonWsConnector({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres', driver: neonCurrent }).source();
      const err = (await source.acquire().catch((e: unknown) => e)) as { code?: string; message?: string };
      expect(err.code).toBe('08006');
      expect(err.message).toContain('502');
      await source.end?.();
    } finally {
      if (proxy) useNeonProxy(proxy, neonCurrent.neonConfig);
      await lonely.close();
    }
  });
});

describe('the proxy’s own SCRAM and md5 arithmetic', () => {
  it('md5: "md5" + md5(md5(password + user) + salt), as pg computes it', async () => {
    // pg's own implementation (untyped, so loaded with require).
    const { postgresMd5PasswordHash } = createRequire(import.meta.url)('pg/lib/crypto/utils.js') as {
      postgresMd5PasswordHash: (user: string, password: string, salt: Buffer) => Promise<string>;
    };
    const salt = Buffer.from([1, 2, 3, 4]);
    expect(md5Password('alice', 'pw ✓', salt)).toBe(await postgresMd5PasswordHash('alice', 'pw ✓', salt));
  });

  it('SCRAM-SHA-256: a server holding the verifier accepts the proof and signs; a wrong signature is refused', async () => {
    // The server side of RFC 5802, written out here: StoredKey and ServerKey from the password.
    const salt = randomBytes(16);
    const iterations = 4096;
    const salted = pbkdf2Sync('pencil', salt, iterations, 32, 'sha256');
    const hmac = (key: Buffer, text: string) => createHmac('sha256', key).update(text).digest();
    const storedKey = createHash('sha256').update(hmac(salted, 'Client Key')).digest();
    const serverKey = hmac(salted, 'Server Key');

    const client = new ScramClient('pencil');
    expect(client.clientFirst).toMatch(/^n,,n=,r=[A-Za-z0-9+/=]+$/);
    const clientNonce = client.clientFirst.slice('n,,n=,r='.length);
    const serverFirst = `r=${clientNonce}${randomBytes(9).toString('base64')},s=${salt.toString('base64')},i=${iterations}`;
    const final = await client.clientFinal(serverFirst);
    const [withoutProof, proofAttr] = final.split(',p=') as [string, string];
    const authMessage = `n=,r=${clientNonce},${serverFirst},${withoutProof}`;
    const signature = hmac(storedKey, authMessage);
    const clientKey = Buffer.from(Buffer.from(proofAttr, 'base64').map((b, i) => b ^ signature[i]!));
    expect(createHash('sha256').update(clientKey).digest().equals(storedKey)).toBe(true);

    expect(client.verify(`v=${hmac(serverKey, authMessage).toString('base64')}`)).toBe(true);
    expect(client.verify(`v=${hmac(Buffer.alloc(32), authMessage).toString('base64')}`)).toBe(false);
    expect(client.verify('e=invalid-proof')).toBe(false);
    await expect(new ScramClient('pencil').clientFinal(`r=someone-elses-nonce,s=${salt.toString('base64')},i=4096`)).rejects.toThrow(
      /malformed/,
    );
  });
});

async function until(check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The type bytes of the server messages in `buf`. */
function messageTypes(buf: Buffer): string[] {
  const types: string[] = [];
  for (let at = 0; at + 5 <= buf.length; at += 1 + buf.readInt32BE(at + 1)) types.push(String.fromCharCode(buf[at]!));
  return types;
}
