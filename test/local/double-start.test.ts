/**
 * A second `npm start` on the same data dir (issue 10, case 2, as real processes). It used to open
 * `.data/pglite` too before failing on a port, and after one write and a Ctrl-C every later start
 * failed with `start-up failed (RuntimeError)` (PGlite: "could not locate a valid checkpoint
 * record"). Now the second fails at once with one line naming the process that has the folder,
 * whatever ports it asked for, and the first keeps working; over several cycles of
 * start → second start refused → write → Ctrl-C, every write survives and the folder always opens.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { DEMO_USER_ID } from '../../src/fitness/seed.js';
import { spawnTopology, stopAll, tempDir, topologyEnv, type TopologyProcess } from './topology-process.js';

const CYCLES = 3;
const SECOND_STARTS_PER_CYCLE = 2;

let dir: { path: string; remove(): Promise<void> };
afterAll(async () => {
  await stopAll();
  await dir?.remove();
});

async function writeWorkout(edgeUrl: string, kind: string): Promise<string> {
  const res = await fetch(`${edgeUrl}/api/workouts`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ userId: DEMO_USER_ID, kind, startedAt: '2026-11-27T07:00:00Z', sets: [] }),
    signal: AbortSignal.timeout(15_000),
  });
  expect(res.status, await res.clone().text()).toBe(201);
  return ((await res.json()) as { id: string }).id;
}

async function readWorkout(edgeUrl: string, id: string): Promise<number> {
  const res = await fetch(`${edgeUrl}/api/workouts/${id}`, { signal: AbortSignal.timeout(15_000) });
  await res.body?.cancel();
  return res.status;
}

/** Starts the second topology and expects the one-line refusal, quickly, naming a live process. */
async function expectRefused(env: Record<string, string>, dataDir: string): Promise<void> {
  const second = spawnTopology(env);
  const exit = await second.waitForExit(30_000);
  expect(exit, second.stderr()).toEqual({ code: 1, signal: null });
  const lines = second
    .stderr()
    .split('\n')
    .filter((l) => l !== '');
  expect(lines, second.stderr()).toHaveLength(1);
  const match = new RegExp(
    `^poolgate: ${escape(dataDir)} is in use by process (\\d+) \\(another npm start\\?\\); stop it, or set EMBEDDED_DATA_DIR \\(if no poolgate is running, delete ${escape(dataDir)}/poolgate\\.lock\\)$`,
  ).exec(lines[0]!);
  expect(match, lines[0]).not.toBeNull();
  expect(() => process.kill(Number(match![1]), 0)).not.toThrow(); // the owner named is running
  expect(second.stdout()).not.toMatch(/embedded PGlite on/); // it never opened the folder: a file check, no PGlite
}

const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('two topologies on one data dir', () => {
  it(`refuses the second at once and never damages the folder (${CYCLES} cycles)`, async () => {
    dir = await tempDir('double');
    const dataDir = `${dir.path}/pglite`;
    const written: string[] = [];
    for (let cycle = 0; cycle < CYCLES; cycle++) {
      const env = await topologyEnv(dataDir);
      const first: TopologyProcess = spawnTopology(env);
      await first.waitForLine(/^poolgate: try /);
      const edgeUrl = `http://127.0.0.1:${env.EDGE_PORT}`;
      for (const id of written) expect(await readWorkout(edgeUrl, id)).toBe(200); // every earlier write survived

      // Same ports (a second `npm start` as typed) and other ports: the folder is what is refused.
      await expectRefused(env, dataDir);
      for (let i = 1; i < SECOND_STARTS_PER_CYCLE; i++) await expectRefused(await topologyEnv(dataDir), dataDir);

      written.push(await writeWorkout(edgeUrl, `cycle-${cycle}`)); // the first still works
      first.pressCtrlC();
      expect(await first.waitForExit(30_000), first.stdout() + first.stderr()).toEqual({ code: 0, signal: null });
      expect(first.stderr()).toBe('');
    }
    const env = await topologyEnv(dataDir);
    const last = spawnTopology(env);
    await last.waitForLine(/^poolgate: try /);
    for (const id of written) expect(await readWorkout(`http://127.0.0.1:${env.EDGE_PORT}`, id)).toBe(200);
    last.pressCtrlC();
    expect(await last.waitForExit(30_000)).toEqual({ code: 0, signal: null });
  }, 400_000);
});
