/**
 * One process at a time per embedded data directory. PGlite takes no lock of its own (it writes a
 * `postmaster.pid` with a fake pid and ignores it), so two processes on one folder both wrote to
 * it, and closing the second left a checkpoint the first's WAL did not contain: every later start
 * failed with `PANIC: could not locate a valid checkpoint record`.
 *
 * The lock is a file inside the folder holding the owner's pid, created with O_EXCL. A lock whose
 * pid is no longer running (a crash, a SIGKILL) is stale and taken over. A pid that runs again, in
 * a process that is no poolgate (a reused pid), is named as such with the file to delete; it is
 * not taken over, since no check can be sure. It is released on stop and, synchronously, when the
 * process exits.
 */
import { readFileSync, statSync, unlinkSync } from 'node:fs';
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { StartupError } from '../runtime/node.js';

export const LOCK_FILE = 'poolgate.lock';

export class DataDirInUseError extends StartupError {
  override name = 'DataDirInUseError';
  constructor(
    readonly dataDir: string,
    readonly pid: number,
    /** The program the pid runs now, when it is known not to be Node (so not a poolgate). */
    stranger?: string,
  ) {
    const lockFile = join(dataDir, LOCK_FILE);
    super(
      stranger
        ? `${dataDir} is locked by process ${pid} (${stranger}), which is not a poolgate (its pid was reused?): delete ${lockFile} if no poolgate is running`
        : `${dataDir} is in use by process ${pid} (another npm start?); stop it, or set EMBEDDED_DATA_DIR (if no poolgate is running, delete ${lockFile})`,
    );
  }
}

export interface DataDirLock {
  readonly dataDir: string;
  /** Removes the lock file if it is still ours. Idempotent. */
  release(): Promise<void>;
}

/** Lock files of this process, so a second open from the same process is refused too. */
const held = new Set<string>();

/** Rounds of create → (stale? remove) before giving up on a lock file that keeps changing. */
const ATTEMPTS = 5;

/**
 * @example
 * const lock = await lockDataDir('.data/pglite'); // throws DataDirInUseError when another process has it
 * … await lock.release();
 */
export async function lockDataDir(dataDir: string): Promise<DataDirLock> {
  const path = resolve(dataDir, LOCK_FILE);
  if (held.has(path)) throw new DataDirInUseError(dataDir, process.pid);
  held.add(path); // before the first await: a concurrent call from this process must see it
  try {
    await makeFolder(dataDir);
    await acquire(dataDir, path);
  } catch (err) {
    held.delete(path);
    throw err;
  }
  return holdLock(dataDir, path);
}

/** Creates the folder (and its parents); a path that is, or lies under, a file is named with the fix. */
async function makeFolder(dataDir: string): Promise<void> {
  try {
    await mkdir(dataDir, { recursive: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST' || code === 'ENOTDIR')
      throw new StartupError(
        `${fileOnTheWay(dataDir)} is a file, not a folder; set EMBEDDED_DATA_DIR to a folder (it is created if missing)`,
      );
    throw new StartupError(
      `cannot create the data folder ${dataDir} (${code ?? String(err)}); set EMBEDDED_DATA_DIR to a folder you can write`,
    );
  }
}

/** The nearest of `path` and its parents that exists and is no folder. */
function fileOnTheWay(path: string): string {
  for (let at = path; ; at = dirname(at)) {
    try {
      if (!statSync(at).isDirectory()) return at;
    } catch {
      // not there: look further up
    }
    if (dirname(at) === at) return path;
  }
}

async function acquire(dataDir: string, path: string): Promise<void> {
  for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
    if (await createExclusive(path)) return;
    const owner = await readOwner(path);
    if (owner === 'gone') continue; // released meanwhile
    if (typeof owner === 'number' && owner !== process.pid && isRunning(owner))
      throw new DataDirInUseError(dataDir, owner, programUnlessNode(owner));
    // Stale: its process is gone (our own pid here means a previous process that had the same pid),
    // or it holds no pid (a lock file is never empty while it is being made, so it was damaged).
    // Only what we read is removed; two starts taking over one stale lock in the same instant are not told apart.
    if ((await readOwner(path)) === owner) await rm(path, { force: true });
  }
  throw new StartupError(`cannot take the lock ${path}; delete it if no poolgate is running`);
}

/**
 * Creates the lock file with our pid already in it: written under a name of our own, then
 * hard-linked into place, which is atomic and fails if the lock exists. (O_EXCL then write left
 * an instant where the lock existed empty; a loaded machine made that instant long enough for a
 * second process to take the empty lock for a stale one.)
 */
async function createExclusive(path: string): Promise<boolean> {
  const mine = `${path}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  await writeFile(mine, `${process.pid}\n`, { flag: 'wx' });
  try {
    await link(mine, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await rm(mine, { force: true });
  }
}

async function readOwner(path: string): Promise<number | 'gone' | 'unreadable'> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    throw err;
  }
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 ? pid : 'unreadable';
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0); // signal 0: only asks whether the process exists
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by another user
  }
}

/**
 * The program `pid` runs when it is known and is not Node (Linux /proc; elsewhere unknown). Every
 * poolgate that takes this lock runs in Node (`npm start`, a gateway, a test).
 */
function programUnlessNode(pid: number): string | undefined {
  let program: string;
  try {
    program = basename(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0] ?? '');
  } catch {
    return undefined;
  }
  return program === '' || /^node(\.exe)?$/.test(program) ? undefined : program;
}

function holdLock(dataDir: string, path: string): DataDirLock {
  // 'exit' listeners must be synchronous; this one also runs on the process.exit() of a forced stop.
  const releaseNow = () => {
    process.off('exit', releaseNow);
    if (!held.delete(path)) return;
    try {
      if (Number(readFileSync(path, 'utf8').trim()) === process.pid) unlinkSync(path);
    } catch {
      // already gone
    }
  };
  process.on('exit', releaseNow);
  let releasing: Promise<void> | undefined;
  return {
    dataDir,
    release: () => (releasing ??= Promise.resolve().then(releaseNow)),
  };
}
