/**
 * A workerd left on EDGE_PORT by an earlier `npm start` that was killed (SIGKILL, an OOM kill)
 * before the watchdog (group-guard.ts) existed: it went on answering /health 200 and the API 503,
 * and every later start failed on the port. The next start stops it, and says so.
 *
 * It is found through Linux's /proc: the socket listening on the port, then the process holding
 * that socket. It counts as left over when it is a workerd whose parent is not Node: miniflare and
 * wrangler, which start workerd, are Node processes, and an orphan is handed to init or to a
 * subreaper. Elsewhere (no /proc) nothing is found, and the port check names the port as before.
 */
import { readFileSync } from 'node:fs';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { basename } from 'node:path';

/** How long the port may take to be released once the leftover is killed. */
const RELEASE_WAIT_MS = 5_000;

/**
 * Kills the workerd left listening on `port`, if that is what listens there; resolves with its pid.
 * @example const pid = await stopLeftoverWorkerd(8787); if (pid) log(`stopped workerd ${pid}`);
 */
export async function stopLeftoverWorkerd(port: number): Promise<number | undefined> {
  if (process.platform !== 'linux' || port === 0) return undefined;
  const inodes = await listeningInodes(port);
  if (inodes.size === 0) return undefined;
  const pid = await socketOwner(inodes);
  if (pid === undefined || !isOrphanedWorkerd(pid)) return undefined;
  process.kill(pid, 'SIGKILL');
  const deadline = Date.now() + RELEASE_WAIT_MS;
  while ((await listeningInodes(port)).size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return pid;
}

/** Inodes of the TCP sockets listening on `port` (IPv4 and IPv6), from /proc/net/tcp{,6}. */
async function listeningInodes(port: number): Promise<Set<string>> {
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(table, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st … inode: the address ends in ":<port in hex>", LISTEN is 0A.
      const fields = line.trim().split(/\s+/);
      const localPort = parseInt(fields[1]?.split(':').pop() ?? '', 16);
      if (localPort === port && fields[3] === '0A' && fields[9] && fields[9] !== '0') inodes.add(fields[9]);
    }
  }
  return inodes;
}

/** The pid that holds one of these sockets open, among the processes this user may look into. */
async function socketOwner(inodes: Set<string>): Promise<number | undefined> {
  const links = new Set([...inodes].map((inode) => `socket:[${inode}]`));
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const fds = await readdir(`/proc/${name}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const link = await readlink(`/proc/${name}/fd/${fd}`).catch(() => '');
      if (links.has(link)) return Number(name);
    }
  }
  return undefined;
}

function isOrphanedWorkerd(pid: number): boolean {
  const stat = read(`/proc/${pid}/stat`);
  const close = stat.lastIndexOf(')');
  if (stat.slice(stat.indexOf('(') + 1, close) !== 'workerd') return false;
  const ppid = Number(stat.slice(close + 2).split(' ')[1]);
  const parentProgram = read(`/proc/${ppid}/cmdline`).split('\0')[0] ?? '';
  return !/^node(\.exe)?$/.test(basename(parentProgram));
}

const read = (path: string) => {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
};
