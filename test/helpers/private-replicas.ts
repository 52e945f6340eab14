/**
 * A primary and N streaming standbys of the test's own (PostgreSQL 15, each in its own temporary
 * folder on its own port), for read-replica tests: replication lag made on purpose
 * (`setApplyDelay`), a standby stopped and started under writes, reads that must wait for a
 * standby to catch up (`caughtUpTo`). The primary is a private cluster (private-postgres.ts); each
 * standby is a `pg_basebackup -R -X stream` of it with a physical replication slot of its own, so
 * the primary keeps the WAL a stopped standby still needs and it catches up when started again.
 *
 * What `setApplyDelay` guarantees: once it resolves, the standby applies each COMMIT record no
 * sooner than `ms` after the primary's commit timestamp (recovery_min_apply_delay), so a
 * transaction committed on the primary afterwards becomes visible there no sooner than that.
 * Replay is sequential: everything after a delayed commit in the WAL waits too, but WAL before it
 * that commits nothing (the rows of the pending transaction, nextval, VACUUM) is applied at once.
 */
import { join } from 'node:path';
import pg from 'pg';
import {
  asPostgres,
  BIN,
  controlServer,
  postgresOwnedDir,
  startedOrDestroyed,
  startPrivatePostgres,
  type PrivatePostgres,
} from './private-postgres.js';
import { freePort, waitFor } from './wait.js';

export interface ReplicaSet {
  primary: PrivatePostgres;
  standbys: Standby[];
  /** Stops every server and deletes every folder (the slots go with the primary's). */
  destroy(): Promise<void>;
}

/** A hot standby: read-only queries while it replays the primary's WAL. */
export interface Standby extends PrivatePostgres {
  /** The primary's physical replication slot this standby streams from. */
  slot: string;
  /** recovery_min_apply_delay in ms (ALTER SYSTEM + reload on the standby); 0 = none. Resolves once new sessions see it. */
  setApplyDelay(ms: number): Promise<void>;
  /** pg_last_wal_replay_lsn() as text: the end of the last WAL record applied. */
  replayLsn(): Promise<string>;
  /** Resolves once the standby has applied the WAL up to `lsn` (polled); throws after `timeoutMs`. */
  caughtUpTo(lsn: string, timeoutMs?: number): Promise<void>;
  /** Stops the standby, drops its slot on the primary (or the primary keeps WAL for it forever) and deletes its folder. */
  destroy(): Promise<void>;
}

export interface ReplicaSetOptions {
  standbys: number;
  /** Require this password (scram-sha-256) on TCP connections, replication included; trust when unset. */
  password?: string;
}

/**
 * An initdb'd primary, then the standbys cloned from it in parallel and started: 1.2–1.7 s for
 * two standbys on this 2-core machine, 2.8–3.4 s while it was busy with other work (on tmpfs;
 * 3.5–4.4 s with the folders on ext4).
 *
 * @example
 * const set = await startReplicaSet({ standbys: 2 });
 * const lsn = (await primaryClient.query('SELECT pg_current_wal_insert_lsn()::text AS lsn')).rows[0].lsn;
 * await set.standbys[0].caughtUpTo(lsn);
 * await set.destroy();
 */
export async function startReplicaSet({ standbys: count, password }: ReplicaSetOptions): Promise<ReplicaSet> {
  const settings = replicationSettings(count);
  const primary = await startPrivatePostgres({ password, settings });
  const started = await Promise.allSettled(Array.from({ length: count }, (_, i) => startStandby(primary, i + 1, password, settings)));
  const standbys = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const destroy = async () => {
    await Promise.allSettled(standbys.map((s) => s.remove()));
    await primary.destroy();
  };
  const failed = started.find((s) => s.status === 'rejected');
  if (failed) {
    await destroy();
    throw failed.reason;
  }
  return { primary, standbys, destroy };
}

/**
 * The primary's and every standby's (a hot standby refuses to start with fewer wal senders or
 * slots than its primary). Each `pg_basebackup -X stream` takes two wal senders while it runs, and
 * the standbys are cloned at once.
 */
function replicationSettings(standbys: number): Record<string, string> {
  return {
    wal_level: 'replica',
    max_wal_senders: String(2 * standbys + 4),
    max_replication_slots: String(standbys + 4),
    hot_standby: 'on',
    hot_standby_feedback: 'on',
  };
}

type StartedStandby = Standby & { /** Deletes the folder, leaving the slot (the set's primary goes too). */ remove(): Promise<void> };

async function startStandby(
  primary: PrivatePostgres,
  n: number,
  password: string | undefined,
  settings: Record<string, string>,
): Promise<StartedStandby> {
  const dir = await postgresOwnedDir();
  const slot = `standby_${n}`;
  const server = controlServer({ dir, port: await freePort(), password, settings: { ...settings, cluster_name: slot } });
  const primaryUrl = primary.url('postgres', password);
  try {
    await cloneInto(dir, primary, slot, password);
  } catch (err) {
    await server.destroy();
    await dropSlot(primaryUrl, slot).catch(() => {});
    throw err;
  }
  return startedOrDestroyed(standbyOf(server, slot, primaryUrl, password));
}

/** A base backup of the primary into `dir`/data that starts as its standby, streaming from `slot`. */
async function cloneInto(dir: string, primary: PrivatePostgres, slot: string, password: string | undefined): Promise<void> {
  // The slot reserves WAL from now on, before the backup starts. Made by the backup itself (-C),
  // it came after the backup's checkpoint, and another clone's checkpoint in between removed the
  // WAL this backup started from ("requested WAL segment … has already been removed").
  const conninfo = `host=127.0.0.1 port=${primary.port} user=postgres${password === undefined ? '' : ` password=${conninfoQuote(password)}`}`;
  await queryOnce(primary.url('postgres', password), 'SELECT pg_create_physical_replication_slot($1, true)', [slot]);
  // -R writes primary_conninfo (password included) and primary_slot_name. A fast checkpoint, or
  // the backup waits for a spread one; no fsync or manifest, which a throwaway copy does not need.
  const clone = [join(BIN, 'pg_basebackup'), '-d', conninfo, '-D', join(dir, 'data'), '-R', '-X', 'stream', '-S', slot];
  await asPostgres([...clone, '--checkpoint=fast', '--no-sync', '--no-manifest']);
}

function standbyOf(server: PrivatePostgres, slot: string, primaryUrl: string, password: string | undefined): StartedStandby {
  const query = (sql: string, params?: unknown[]) => queryOnce(server.url('postgres', password), sql, params);
  return {
    ...server,
    slot,
    remove: () => server.destroy(),
    async setApplyDelay(ms) {
      if (!Number.isInteger(ms) || ms < 0) throw new Error(`setApplyDelay takes whole milliseconds, 0 or more; got ${ms}.`);
      await query(`ALTER SYSTEM SET recovery_min_apply_delay = ${ms}`);
      await query('SELECT pg_reload_conf()');
      // The postmaster signals the startup process (which applies the delay) before it forks
      // another backend: a new session seeing the value means the startup process has the signal.
      const seen = async () => (await query(`SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'`)).rows[0]?.setting;
      await waitFor(async () => (await seen()) === String(ms), { what: `recovery_min_apply_delay = ${ms} on standby ${slot}` });
    },
    async replayLsn() {
      return String((await query('SELECT pg_last_wal_replay_lsn()::text AS lsn')).rows[0]?.lsn);
    },
    caughtUpTo: (lsn, timeoutMs = 10_000) => caughtUpTo(server.url('postgres', password), slot, lsn, timeoutMs),
    async destroy() {
      await server.destroy();
      await dropSlot(primaryUrl, slot);
    },
  };
}

async function caughtUpTo(url: string, name: string, lsn: string, timeoutMs: number): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  try {
    const target = recordBoundary(lsn);
    let seen = '';
    await waitFor(
      async () => {
        const { rows } = await client.query<{ lsn: string; done: boolean }>(
          'SELECT pg_last_wal_replay_lsn()::text AS lsn, pg_last_wal_replay_lsn() >= $1::pg_lsn AS done',
          [target],
        );
        seen = rows[0]!.lsn;
        return rows[0]!.done;
      },
      { timeoutMs, intervalMs: 10, what: `standby ${name} to replay up to ${lsn}` },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; it had replayed up to ${seen}`);
    });
  } finally {
    await client.end().catch(() => {});
  }
}

const PAGE_BYTES = 8192n; // wal_block_size
const SEGMENT_BYTES = 16n * 1024n * 1024n; // wal_segment_size
const SHORT_HEADER_BYTES = 24n;
const LONG_HEADER_BYTES = 40n;

/**
 * The replay position a standby reaches once it has applied everything before `lsn`.
 * pg_current_wal_insert_lsn() on a page boundary points past the page header (where the next
 * record will start), while a standby's replay position stops at the end of the last record: the
 * boundary itself. Compared as they are, a standby that has replayed everything would seem behind
 * until some other WAL came (on an idle primary, the next standby snapshot: up to 15 s).
 */
export function recordBoundary(lsn: string): string {
  const [high, low] = lsn.split('/').map((part) => BigInt(`0x${part}`));
  if (high === undefined || low === undefined) throw new Error(`not an LSN: ${lsn}`);
  let at = (high << 32n) | low;
  if (at % SEGMENT_BYTES === LONG_HEADER_BYTES) at -= LONG_HEADER_BYTES;
  else if (at % PAGE_BYTES === SHORT_HEADER_BYTES) at -= SHORT_HEADER_BYTES;
  return `${(at >> 32n).toString(16).toUpperCase()}/${(at & 0xffffffffn).toString(16).toUpperCase()}`;
}

/** Drops the slot once its wal sender has gone (it exits soon after the standby disconnects). */
async function dropSlot(primaryUrl: string, slot: string): Promise<void> {
  await waitFor(
    async () => {
      await queryOnce(primaryUrl, 'SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1', [slot]);
      return true;
    },
    { timeoutMs: 5_000, intervalMs: 20, what: `replication slot ${slot} to be dropped` },
  );
}

async function queryOnce(url: string, sql: string, params?: unknown[]) {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  try {
    return await client.query<Record<string, unknown>>(sql, params);
  } finally {
    await client.end().catch(() => {});
  }
}

/** A libpq connection-string value: quoted, with quotes and backslashes escaped. */
const conninfoQuote = (value: string) => `'${value.replace(/[\\']/g, (c) => `\\${c}`)}'`;
