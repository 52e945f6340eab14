/**
 * The replica helper does what read-replica tests will lean on (issue 22): a primary and two
 * streaming standbys of PostgreSQL 15, a commit seen on each standby once it has caught up to the
 * primary's LSN, replication lag made on purpose (recovery_min_apply_delay), a standby stopped
 * while the primary takes writes that catches up when started again (its slot kept the WAL), and
 * standbys that refuse writes. With a password, the standby streams over SCRAM.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { privatePostgresAvailable } from '../helpers/private-postgres.js';
import { recordBoundary, startReplicaSet, type ReplicaSet } from '../helpers/private-replicas.js';
import { waitFor } from '../helpers/wait.js';

const APPLY_DELAY_MS = 1500;

async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => {});
  await client.connect();
  return client;
}

/** A committed row on the primary, and the primary's WAL insert position after its commit. */
async function commitRow(primary: pg.Client, note: string): Promise<{ id: number; lsn: string }> {
  const { rows } = await primary.query<{ id: number }>('INSERT INTO replica_probe (note) VALUES ($1) RETURNING id', [note]);
  const lsn = await primary.query<{ lsn: string }>('SELECT pg_current_wal_insert_lsn()::text AS lsn');
  return { id: rows[0]!.id, lsn: lsn.rows[0]!.lsn };
}

const hasRow = async (client: pg.Client, id: number) =>
  (await client.query('SELECT 1 FROM replica_probe WHERE id = $1', [id])).rowCount === 1;

const lsnBefore = async (client: pg.Client, a: string, b: string) =>
  (await client.query<{ before: boolean }>('SELECT $1::pg_lsn < $2::pg_lsn AS before', [a, b])).rows[0]!.before;

describe.skipIf(!privatePostgresAvailable)('streaming replicas started by the test helper (private clusters)', () => {
  let set: ReplicaSet;
  let primary: pg.Client;
  let readers: pg.Client[];

  beforeAll(async () => {
    const startedAt = performance.now();
    set = await startReplicaSet({ standbys: 2 });
    console.info(`startReplicaSet({ standbys: 2 }): ${Math.round(performance.now() - startedAt)} ms`);
    primary = await connect(set.primary.url());
    await primary.query('CREATE TABLE replica_probe (id serial PRIMARY KEY, note text NOT NULL)');
    readers = await Promise.all(set.standbys.map((s) => connect(s.url())));
  });

  afterAll(async () => {
    await Promise.allSettled([primary, ...(readers ?? [])].map((c) => c?.end()));
    await set?.destroy();
  });

  it('a row committed on the primary is visible on each standby once it has replayed up to the LSN after the commit', async () => {
    const { id, lsn } = await commitRow(primary, 'replicated');
    for (const [i, standby] of set.standbys.entries()) {
      await standby.caughtUpTo(lsn);
      expect(await hasRow(readers[i]!, id)).toBe(true);
      expect(await lsnBefore(primary, await standby.replayLsn(), lsn)).toBe(false);
    }
  });

  it('an apply delay holds a commit back on that standby only; it shows once the standby catches up', async () => {
    const [delayed, prompt] = set.standbys;
    const [delayedReader, promptReader] = readers;
    await delayed!.setApplyDelay(APPLY_DELAY_MS);
    try {
      const { id, lsn } = await commitRow(primary, 'delayed');
      const committedAt = performance.now();
      const heldAt = await delayed!.replayLsn();
      expect(await hasRow(delayedReader!, id)).toBe(false);
      expect(await lsnBefore(primary, heldAt, lsn)).toBe(true);

      await prompt!.caughtUpTo(lsn);
      expect(await hasRow(promptReader!, id)).toBe(true);
      // The standby without a delay has it while the delayed one still has not.
      expect(await hasRow(delayedReader!, id)).toBe(false);

      await delayed!.caughtUpTo(lsn);
      const shownAfterMs = performance.now() - committedAt;
      expect(await hasRow(delayedReader!, id)).toBe(true);
      expect(await lsnBefore(primary, heldAt, await delayed!.replayLsn())).toBe(true);
      // A lower bound (load only makes it later): the commit was held back for the delay, less
      // the moments between the commit's timestamp and committedAt.
      expect(shownAfterMs).toBeGreaterThan(APPLY_DELAY_MS - 300);
    } finally {
      await delayed!.setApplyDelay(0);
    }
  });

  it('a standby stopped while the primary takes writes catches up when started again and serves reads', async () => {
    const standby = set.standbys[1]!;
    const slotActive = async () =>
      (await primary.query<{ active: boolean }>('SELECT active FROM pg_replication_slots WHERE slot_name = $1', [standby.slot])).rows[0]
        ?.active;
    let writing = true;
    let written = 0;
    const writer = (async () => {
      const client = await connect(set.primary.url());
      try {
        while (writing) {
          await client.query("INSERT INTO replica_probe (note) SELECT 'while down' FROM generate_series(1, 20)");
          written += 20;
          await new Promise((r) => setTimeout(r, 5));
        }
      } finally {
        await client.end();
      }
    })();
    try {
      await waitFor(() => written > 0, { what: 'the first writes' });
      await readers[1]!.end();
      await standby.stop();
      await waitFor(async () => (await slotActive()) === false, { what: 'the slot to be inactive' });
      const writtenWhileDown = written;
      // A segment switch and a checkpoint: without the slot, the primary could recycle WAL the
      // stopped standby still needs.
      await primary.query('SELECT pg_switch_wal()');
      await primary.query('CHECKPOINT');
      await waitFor(() => written > writtenWhileDown + 100, { what: 'writes while the standby is down' });

      await standby.start();
      await standby.acceptsConnections();
    } finally {
      writing = false;
      await writer;
    }
    const { lsn } = await commitRow(primary, 'after restart');
    await standby.caughtUpTo(lsn);
    readers[1] = await connect(standby.url());
    const count = 'SELECT count(*)::int AS n FROM replica_probe';
    const onPrimary = (await primary.query<{ n: number }>(count)).rows[0]!.n;
    expect((await readers[1].query<{ n: number }>(count)).rows[0]!.n).toBe(onPrimary);
    expect((await readers[1].query<{ r: boolean }>('SELECT pg_is_in_recovery() AS r')).rows[0]!.r).toBe(true);
    await waitFor(async () => (await slotActive()) === true, { what: 'the slot to be streaming again' });
  });

  it('writes on a standby fail with read_only_sql_transaction (25006)', async () => {
    for (const reader of readers) {
      await expect(reader.query("INSERT INTO replica_probe (note) VALUES ('on a standby')")).rejects.toMatchObject({ code: '25006' });
      await expect(reader.query('CREATE TABLE replica_write (id int)')).rejects.toMatchObject({ code: '25006' });
    }
  });
});

describe('an LSN just past a page header counts from the page boundary (where a standby stops replaying)', () => {
  it('segment start (long header), page start (short header), elsewhere unchanged', () => {
    expect(recordBoundary('0/2000028')).toBe('0/2000000');
    expect(recordBoundary('1/1002018')).toBe('1/1002000');
    expect(recordBoundary('0/1002100')).toBe('0/1002100');
    expect(recordBoundary('0/1002028')).toBe('0/1002028');
  });
});

describe.skipIf(!privatePostgresAvailable)('a replica set with a password (private clusters)', () => {
  const PASSWORD = "it's a secret";
  let set: ReplicaSet;

  beforeAll(async () => {
    set = await startReplicaSet({ standbys: 1, password: PASSWORD });
  });

  afterAll(async () => {
    await set?.destroy();
  });

  it('the standby streams over SCRAM and refuses a wrong password', async () => {
    const primary = await connect(set.primary.url('postgres', PASSWORD));
    try {
      await primary.query('CREATE TABLE replica_probe (id serial PRIMARY KEY, note text NOT NULL)');
      const { id, lsn } = await commitRow(primary, 'over scram');
      const standby = set.standbys[0]!;
      await standby.caughtUpTo(lsn);
      const reader = await connect(standby.url('postgres', PASSWORD));
      try {
        expect(await hasRow(reader, id)).toBe(true);
      } finally {
        await reader.end();
      }
      await expect(connect(standby.url('postgres', 'not it'))).rejects.toMatchObject({ code: '28P01' });
    } finally {
      await primary.end();
    }
  });

  it('destroying one standby drops its slot on the primary (or the primary would keep WAL for it)', async () => {
    const primary = await connect(set.primary.url('postgres', PASSWORD));
    try {
      const slots = async () => (await primary.query('SELECT slot_name FROM pg_replication_slots')).rows.map((r) => r.slot_name as string);
      expect(await slots()).toEqual([set.standbys[0]!.slot]);
      await set.standbys[0]!.destroy();
      expect(await slots()).toEqual([]);
    } finally {
      await primary.end();
    }
  });
});
