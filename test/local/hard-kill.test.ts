/**
 * A hard kill of `npm start` leaves nothing running ("a newcomer's first hour", case 1). workerd
 * runs in a process group of its own (so that Ctrl-C reaches only the topology, which drains
 * first); after a SIGKILL of the topology (or an OOM kill) it stayed up, answering /health on
 * EDGE_PORT and 503 on the API, and the next `npm start` failed with "port … set EDGE_PORT". Now a
 * watchdog kills workerd's group when the topology dies however it dies, the topology stops by
 * itself when npm above it is killed, and a workerd left on EDGE_PORT by an earlier run (one from
 * before this fix) is recognised and stopped by the next start.
 */
import { spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { DEMO_USER_ID } from '../../src/fitness/seed.js';
import { waitFor } from '../helpers/wait.js';
import {
  BIN,
  descendants,
  isListening,
  processInfo,
  ROOT,
  spawnTopology,
  stopAll,
  tempDir,
  topologyEnv,
  type ProcessInfo,
} from './topology-process.js';

const dirs: { remove(): Promise<void> }[] = [];
const leftovers: number[] = [];
const newDataDir = async () => {
  const dir = await tempDir('hard-kill');
  dirs.push(dir);
  return `${dir.path}/pglite`;
};
afterAll(async () => {
  await stopAll();
  for (const pid of leftovers.filter((p) => processInfo(p))) process.kill(pid, 'SIGKILL');
  await Promise.all(dirs.map((d) => d.remove()));
});

const describeLinux = process.platform === 'linux' ? describe : describe.skip;

async function expectServes(edgePort: string): Promise<void> {
  const res = await fetch(`http://127.0.0.1:${edgePort}/api/users/${DEMO_USER_ID}`, { signal: AbortSignal.timeout(15_000) });
  expect(res.status, await res.clone().text()).toBe(200);
  expect(((await res.json()) as { id: string }).id).toBe(DEMO_USER_ID);
}

/** Within a bounded wait: nothing listens on the edge port and none of `processes` runs any more. */
async function expectAllGone(edgePort: string, processes: ProcessInfo[]): Promise<void> {
  await waitFor(async () => !(await isListening(Number(edgePort))), {
    timeoutMs: 20_000,
    intervalMs: 100,
    what: `port ${edgePort} to be free`,
  });
  const left = () => processes.filter((p) => processInfo(p.pid));
  await waitFor(() => left().length === 0, { timeoutMs: 20_000, intervalMs: 100, what: 'every process of that run to end' }).catch(
    (err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(left())}`);
    },
  );
}

/** The second start after a hard kill: serves on the same ports, and Ctrl-C still stops it cleanly. */
async function expectStartsAgain(env: Record<string, string>): Promise<void> {
  const again = spawnTopology(env, { node: true });
  await again.waitForLine(/^poolgate: try /);
  await expectServes(env.EDGE_PORT!);
  again.pressCtrlC();
  expect(await again.waitForExit(60_000), again.stdout() + again.stderr()).toEqual({ code: 0, signal: null });
}

describeLinux('a hard kill of npm start', () => {
  it('SIGKILL of the topology (what npm start execs): its workerd goes, the edge port frees, the next start serves', async () => {
    const env = await topologyEnv(await newDataDir());
    const first = spawnTopology(env, { node: true });
    await first.waitForLine(/^poolgate: try /);
    await expectServes(env.EDGE_PORT!);
    const tree = await descendants(first.pid);
    expect(
      tree.some((p) => p.comm === 'workerd'),
      JSON.stringify(tree),
    ).toBe(true);

    process.kill(first.pid, 'SIGKILL');
    expect(await first.waitForExit(10_000)).toEqual({ code: null, signal: 'SIGKILL' });
    await expectAllGone(env.EDGE_PORT!, tree);
    await expectStartsAgain(env);
  }, 300_000);

  it('SIGKILL of npm above it: the topology stops by itself, and no process of that npm start remains', async () => {
    const env = await topologyEnv(await newDataDir());
    const npm = spawnTopology(env, { npm: true });
    await npm.waitForLine(/^poolgate: try /);
    const tree = await descendants(npm.pid);
    expect(
      tree.some((p) => p.comm === 'workerd'),
      JSON.stringify(tree),
    ).toBe(true);

    process.kill(npm.pid, 'SIGKILL');
    await expectAllGone(env.EDGE_PORT!, tree);
    expect(npm.stdout()).toMatch(/^poolgate: parent process \d+ is gone \(npm killed\?\), stopping$/m);
    expect(npm.stdout()).toMatch(/^poolgate: stopped$/m);
    await expectStartsAgain(env);
  }, 300_000);

  it('a workerd left on EDGE_PORT by an earlier run (its parent gone) is stopped, said so, and the start goes on', async () => {
    const dataDir = await newDataDir();
    const env = await topologyEnv(dataDir);
    const leftover = await leaveWorkerd(env.EDGE_PORT!, `${dataDir}/..`);
    leftovers.push(leftover);
    expect(await (await fetch(`http://127.0.0.1:${env.EDGE_PORT}/`)).text()).toBe('a leftover workerd');

    const proc = spawnTopology(env, { node: true });
    await proc.waitForLine(/^poolgate: try /);
    expect(proc.stdout()).toContain(
      `poolgate: stopped workerd (pid ${leftover}) left on port ${env.EDGE_PORT} by an earlier npm start whose process is gone\n`,
    );
    expect(processInfo(leftover)).toBeUndefined();
    await expectServes(env.EDGE_PORT!);
    proc.pressCtrlC();
    expect(await proc.waitForExit(60_000)).toEqual({ code: 0, signal: null });
  }, 300_000);
});

/** Runs fixtures/leave-workerd.ts: a workerd on `port` whose parent has been SIGKILLed. Resolves with its pid. */
function leaveWorkerd(port: string, dir: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(`${BIN}/tsx`, ['test/local/fixtures/leave-workerd.ts', port, dir], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.once('exit', () => {
      const pid = Number(/^workerd (\d+)$/m.exec(out)?.[1]);
      if (pid > 0) resolve(pid);
      else reject(new Error(`leave-workerd printed no pid: ${out}`));
    });
  });
}
