/**
 * What a bench run killed outright (SIGKILL; `tsx` escalating a Ctrl-C it thinks went
 * unanswered) leaves behind is cleaned up by the next run: anything named after a pid of this
 * machine whose process is gone.
 */
import type pg from 'pg';

/** Whether process `pid` exists on this machine (EPERM: it does, owned by someone else). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Drops `<prefix><pid>` databases whose process is gone, on a loopback server only (elsewhere the
 * pid names no process of this machine); returns the names dropped.
 */
export async function dropStaleDatabases(admin: pg.Client, source: URL, prefix: string): Promise<string[]> {
  if (!/^(127\.|localhost$|\[?::1\]?$)/.test(source.hostname)) return [];
  const { rows } = await admin.query<{ name: string }>('SELECT datname AS name FROM pg_database WHERE datname ~ $1', [`^${prefix}[0-9]+$`]);
  const stale = rows
    .map((r) => r.name)
    .filter((name) => {
      const pid = Number(name.slice(prefix.length));
      return pid !== process.pid && !isAlive(pid);
    });
  for (const name of stale) await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
  return stale;
}
