/**
 * Process groups that must not outlive this process. workerd (and `wrangler dev`) run in process
 * groups of their own, so that the terminal's Ctrl-C reaches only the topology, which drains first
 * and then stops them. A SIGKILL or an OOM kill of the topology runs none of its code, and they
 * stayed up, holding their ports.
 *
 * A watchdog does it instead: one small `sh`, in a group of its own, reads group ids from a pipe
 * whose other end only this process holds, and when that pipe ends (the kernel closes it however
 * this process dies) it SIGKILLs each group still listed. Why this and not the alternatives:
 * - PR_SET_PDEATHSIG (`setpriv --pdeathsig`) has no Node API, is Linux-only, needs util-linux, and
 *   reaches only its own process: wrangler's workerd would stay.
 * - A watchdog polling our pid needs a poll interval and can mistake a reused pid for us; the end
 *   of a pipe is instant and cannot be reused.
 * - `sh` is POSIX everywhere poolgate runs its topology, and costs no second Node process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';

/**
 * Reads `+ <pgid>` (guard it) and `- <pgid>` (it has stopped) until its input ends, then kills
 * the groups left. INT and HUP are ignored: a terminal's signals must not end the guard early.
 */
const WATCHDOG = `trap '' INT HUP
groups=
while read -r op id; do
  case "$op" in
    +) groups="$groups $id" ;;
    -) left=; for g in $groups; do [ "$g" = "$id" ] || left="$left $g"; done; groups=$left ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done`;

let watchdog: ChildProcess | undefined;

function watchdogInput(): NodeJS.WritableStream | undefined {
  if (process.platform === 'win32') return undefined; // no process groups to guard there
  if (!watchdog) {
    watchdog = spawn('/bin/sh', ['-c', WATCHDOG], { stdio: ['pipe', 'ignore', 'ignore'], detached: true });
    watchdog.on('error', () => {}); // no sh: nothing guards, as before
    watchdog.stdin!.on('error', () => {}); // the watchdog was killed: writes fail, harmlessly
    // Neither the watchdog nor its pipe keeps this process alive.
    watchdog.unref();
    (watchdog.stdin as Socket).unref();
  }
  return watchdog.stdin!;
}

/**
 * Kills process group `pgid` if this process dies before calling the function returned (which
 * says the group has stopped; call it once its leader has exited).
 * @example const child = spawn(cmd, args, { detached: true }); child.once('exit', killWithThisProcess(child.pid!));
 */
export function killWithThisProcess(pgid: number): () => void {
  const input = watchdogInput();
  input?.write(`+ ${pgid}\n`);
  let forgotten = false;
  return () => {
    if (forgotten) return;
    forgotten = true;
    input?.write(`- ${pgid}\n`);
  };
}
