/**
 * The embedded data dir is never opened twice (issue 10, case 2, at the lock's level). PGlite lets
 * two processes open one folder, and that damaged it ("PANIC: could not locate a valid checkpoint
 * record"); now a lock file with the owner's pid, created with O_EXCL, is taken before PGlite opens
 * the folder, refused while its owner runs, taken over once its owner is gone, released on stop
 * and on exit. A folder PGlite cannot open is named as such, not as a bare RuntimeError.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { DataDirInUseError, LOCK_FILE, lockDataDir } from '../../src/local/data-dir-lock.js';
import { DataDirDamagedError, startEmbeddedPostgres, type EmbeddedPostgres } from '../../src/local/embedded.js';
import { damage, ROOT, tempDir } from './topology-process.js';

const dirs: { remove(): Promise<void> }[] = [];
const newDataDir = async () => {
  const dir = await tempDir('lock');
  dirs.push(dir);
  return join(dir.path, 'pglite');
};
afterAll(async () => {
  await Promise.all(dirs.map((d) => d.remove()));
});

const inUseLine = (dataDir: string, pid: number) =>
  `${dataDir} is in use by process ${pid} (another npm start?); stop it, or set EMBEDDED_DATA_DIR (if no poolgate is running, delete ${join(dataDir, LOCK_FILE)})`;

async function query<T = unknown>(db: EmbeddedPostgres, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  try {
    return (await client.query(sql, params)).rows as T[];
  } finally {
    await client.end();
  }
}

/** The pid of a process that has exited: what a lock left by a crash holds. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(child.stdout);
}

describe('one process per data dir', () => {
  it('refuses a second open while the first is open, 20 times in a row, and the first keeps its data', async () => {
    const dataDir = await newDataDir();
    const first = await startEmbeddedPostgres({ dataDir });
    try {
      await query(first, 'CREATE TABLE marks (n int)');
      for (let i = 0; i < 20; i++) {
        const second = startEmbeddedPostgres({ dataDir });
        await expect(second).rejects.toThrow(DataDirInUseError);
        await expect(second).rejects.toThrow(inUseLine(dataDir, process.pid));
        await query(first, 'INSERT INTO marks VALUES ($1)', [i]);
      }
      expect(await readFile(join(dataDir, LOCK_FILE), 'utf8')).toBe(`${process.pid}\n`);
    } finally {
      await first.stop();
    }
    expect(existsSync(join(dataDir, LOCK_FILE))).toBe(false); // released on stop

    const again = await startEmbeddedPostgres({ dataDir });
    try {
      expect(await query(again, 'SELECT count(*)::int AS n FROM marks')).toEqual([{ n: 20 }]);
    } finally {
      await again.stop();
    }
  });

  it('of 20 simultaneous attempts in this process, exactly one gets the lock', async () => {
    const dataDir = await newDataDir();
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => lockDataDir(dataDir)));
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won).toHaveLength(1);
    for (const r of results) if (r.status === 'rejected') expect(r.reason).toBeInstanceOf(DataDirInUseError);
    await won[0]!.value.release();
    await (await lockDataDir(dataDir)).release();
  });

  it('of 6 processes trying in the same instant, one holds the lock at a time and the others are refused', async () => {
    const dataDir = await newDataDir();
    const startAt = Date.now() + 4_000; // after every tsx has started (a slower start tries later: then it may win after a release)
    const runs = Array.from({ length: 6 }, () => runHoldLock(dataDir, startAt, 1_500));
    const outputs = await Promise.all(runs);
    const report = outputs.join('\n');
    const holders = outputs
      .filter((o) => o.startsWith('locked '))
      .map((o) => ({ locked: Number(/^locked (\d+)/.exec(o)![1]), releasing: Number(/releasing (\d+)/.exec(o)![1]) }))
      .sort((a, b) => a.locked - b.locked);
    expect(holders.length, report).toBeGreaterThanOrEqual(1);
    // Never two owners at once: each holder took the lock only after the one before let it go.
    for (let i = 1; i < holders.length; i++) expect(holders[i]!.locked, report).toBeGreaterThanOrEqual(holders[i - 1]!.releasing);
    for (const o of outputs.filter((o) => !o.startsWith('locked '))) expect(o).toMatch(/^refused: .* is in use by process \d+ /);
    expect(existsSync(join(dataDir, LOCK_FILE))).toBe(false);
  });

  it('names a live owner of another process, and takes the lock over once that process is gone', async () => {
    const dataDir = await newDataDir();
    const owner = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
    try {
      await lockDataDir(dataDir).then((l) => l.release()); // creates the folder
      await writeFile(join(dataDir, LOCK_FILE), `${owner.pid}\n`);
      await expect(lockDataDir(dataDir)).rejects.toThrow(inUseLine(dataDir, owner.pid!));
    } finally {
      const gone = new Promise((r) => owner.once('exit', r));
      owner.kill('SIGKILL');
      await gone;
    }
    const lock = await lockDataDir(dataDir);
    expect(await readFile(join(dataDir, LOCK_FILE), 'utf8')).toBe(`${process.pid}\n`);
    await lock.release();
  });

  it.skipIf(process.platform !== 'linux')(
    'names a live owner that is not a poolgate (a reused pid) as such, and the lock file to delete',
    async () => {
      const dataDir = await newDataDir();
      const stranger = spawn('sleep', ['60'], { stdio: 'ignore' });
      try {
        await lockDataDir(dataDir).then((l) => l.release());
        await writeFile(join(dataDir, LOCK_FILE), `${stranger.pid}\n`);
        await expect(lockDataDir(dataDir)).rejects.toThrow(
          `${dataDir} is locked by process ${stranger.pid} (sleep), which is not a poolgate (its pid was reused?): delete ${join(dataDir, LOCK_FILE)} if no poolgate is running`,
        );
        expect(await readFile(join(dataDir, LOCK_FILE), 'utf8')).toBe(`${stranger.pid}\n`); // left for the person to judge
      } finally {
        stranger.kill('SIGKILL');
      }
    },
  );

  it('a data dir that is a file, or under one: its path and the fix, not a bare EEXIST', async () => {
    const dir = await newDataDir();
    await lockDataDir(dir).then((l) => l.release());
    const file = join(dir, 'a-file');
    await writeFile(file, '');
    const line = `${file} is a file, not a folder; set EMBEDDED_DATA_DIR to a folder (it is created if missing)`;
    await expect(lockDataDir(file)).rejects.toThrow(line);
    await expect(lockDataDir(join(file, 'pglite'))).rejects.toThrow(line);
  });

  it('never shows a lock file without its pid, so no one can take a fresh lock for a stale one', async () => {
    // Before: O_EXCL then write. A loaded machine let a second process read the lock empty in
    // between, wait, read it empty again, remove it as stale and take it: two owners (seen in CI).
    const dataDir = await newDataDir();
    const path = join(dataDir, LOCK_FILE);
    await lockDataDir(dataDir).then((l) => l.release());
    // Another process reads the lock as fast as it can while this one takes and releases it.
    const watcher = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('fs'); let reads = 0, empty = 0; const end = Date.now() + 2500;
         while (Date.now() < end) { let t; try { t = fs.readFileSync(process.argv[1], 'utf8') } catch { continue } reads++; if (t === '') empty++ }
         console.log(JSON.stringify({ reads, empty }))`,
        path,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    let out = '';
    watcher.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const done = new Promise((resolve) => watcher.once('exit', resolve));
    const until = Date.now() + 2_000;
    while (Date.now() < until) await (await lockDataDir(dataDir)).release();
    await done;
    const seen = JSON.parse(out) as { reads: number; empty: number };
    expect(seen.reads).toBeGreaterThan(0);
    expect(seen.empty).toBe(0);
  });

  it('takes over a stale lock (its pid is dead) and a damaged one (no pid in it)', async () => {
    const dataDir = await newDataDir();
    await lockDataDir(dataDir).then((l) => l.release());
    for (const content of [`${deadPid()}\n`, '']) {
      await writeFile(join(dataDir, LOCK_FILE), content);
      const lock = await lockDataDir(dataDir);
      expect(await readFile(join(dataDir, LOCK_FILE), 'utf8')).toBe(`${process.pid}\n`);
      await lock.release();
      expect(existsSync(join(dataDir, LOCK_FILE))).toBe(false);
    }
  });

  it('is released when its process exits without stopping (process.exit, an uncaught error)', async () => {
    for (const then of ['exit', 'throw'] as const) {
      const dataDir = await newDataDir();
      const output = await runHoldLock(dataDir, 0, 0, then);
      expect(output.split('\n')[0], output).toMatch(/^locked \d+$/);
      expect(existsSync(join(dataDir, LOCK_FILE)), output).toBe(false);
    }
  });
});

describe('a data dir PGlite cannot open', () => {
  it('is reported as damaged with what to do, and its lock is released', async () => {
    const dataDir = await newDataDir();
    await (await startEmbeddedPostgres({ dataDir })).stop();
    await damage(dataDir);
    const opening = startEmbeddedPostgres({ dataDir });
    await expect(opening).rejects.toThrow(DataDirDamagedError);
    await expect(opening).rejects.toThrow(`${dataDir} cannot be opened (damaged?): move it aside or delete it to start fresh`);
    expect(existsSync(join(dataDir, LOCK_FILE))).toBe(false);
  });
});

function runHoldLock(dataDir: string, startAt: number, holdMs: number, then = 'release'): Promise<string> {
  return new Promise((resolve, reject) => {
    const args = ['test/local/fixtures/hold-lock.ts', dataDir, String(startAt), String(holdMs), then];
    const child = spawn(join(ROOT, 'node_modules/.bin/tsx'), args, {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`hold-lock did not finish in 30 s: ${out}`));
    }, 30_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(out.trim());
    });
  });
}
