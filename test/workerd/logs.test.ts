/**
 * The request id end to end (issue 24): a write through the edge in real workerd, forwarded
 * (signed) to a real Node gateway. Both sides log at debug; the worker's console output comes
 * from miniflare's structured logs. Every line either side wrote is one JSON object of the same
 * shape, and the edge's request line and the Node side's carry the same request id — the one
 * the client got back.
 */
import { Miniflare } from 'miniflare';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workerdWorker } from '../../src/local/workerd.js';
import { insertAthlete, startEdgeStack, workoutBody, type Athlete, type EdgeStack } from '../helpers/edge.js';
import { waitFor } from '../helpers/wait.js';

type Line = Record<string, unknown> & { time: string; level: string; msg: string };

let stack: EdgeStack;
let mf: Miniflare;
let edge: URL;
let writer: Athlete;
const workerOutput: string[] = [];

beforeAll(async () => {
  stack = await startEdgeStack('worker', { prefix: 'poolgate_logs', gatewayEnv: { LOG_LEVEL: 'debug' } });
  writer = await insertAthlete(stack.db);
  mf = new Miniflare({
    host: '127.0.0.1',
    port: 0,
    handleStructuredLogs: ({ message }) => void workerOutput.push(message),
    workers: [workerdWorker('edge', stack.bundlePath, { ...stack.edgeEnv, LOG_LEVEL: 'debug' })],
  });
  edge = await mf.ready;
});

afterAll(async () => {
  await mf?.dispose().catch(() => {});
  await stack?.stop();
});

/** The lines as JSON: each one must parse, with time, level and msg. */
function parsed(lines: readonly string[]): Line[] {
  return lines.map((text) => {
    const line = JSON.parse(text) as Line;
    expect(line, text).toMatchObject({ time: expect.any(String), level: expect.any(String), msg: expect.any(String) });
    return line;
  });
}

describe('a forwarded write', () => {
  it("carries the edge's request id into the Node side's log line", async () => {
    const res = await fetch(new URL('/api/workouts', edge), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(workoutBody(writer.userId, 'logged-run')),
    });
    const text = await res.text();
    expect(res.status, text).toBe(201);
    const requestId = res.headers.get('x-request-id');
    expect(requestId).toMatch(/^[\w.:-]+$/);

    const nodeLines = () => parsed(stack.logs.filter((l) => !l.startsWith('neon-proxy:')));
    await waitFor(() => workerOutput.some((l) => l.includes(requestId!)), { what: "the edge's request line" });
    await waitFor(() => nodeLines().some((l) => l.requestId === requestId), { what: "the Node side's request line" });

    const atEdge = parsed(workerOutput).find((l) => l.event === 'request' && l.requestId === requestId);
    expect(atEdge).toMatchObject({ level: 'debug', method: 'POST', route: '/api/workouts', status: 201, client: 'forwarded' });
    const atNode = nodeLines().find((l) => l.event === 'request' && l.requestId === requestId);
    expect(atNode).toMatchObject({ level: 'debug', method: 'POST', route: '/api/workouts', status: 201, client: 'pg-pool' });
    // The same shape on both sides: the same keys for the same event.
    expect(Object.keys(atEdge!).sort()).toEqual(Object.keys(atNode!).sort());
  });
});
