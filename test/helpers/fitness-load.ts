/**
 * A mixed load on the fitness API over real HTTP: users created first, then `requests` requests
 * with `concurrency` in flight, cycling through every kind of route — single reads (lanes), read
 * batches (GET …/summary), an interactive read (…/workouts/latest), writes and transactions
 * (POST users and workouts, PATCH preferences). Seven users against eight kinds of request, so every
 * user meets every kind. Answers counted by status, with the error codes
 * of whatever was not 2xx/404, so a test can say what went wrong, not only that it did.
 */
import { randomUUID } from 'node:crypto';
import { json } from './gateway.js';

export interface LoadResult {
  /** Requests per HTTP status. */
  statuses: Record<number, number>;
  /** `<status> <code>` per answer that was neither 2xx nor 404, counted. */
  failures: Record<string, number>;
}

type Step = (base: string, user: string, workout: string | undefined) => Promise<{ status: number; body: any }>;

const STEPS: readonly Step[] = [
  (base, user) => json(`${base}/api/users/${user}`),
  (base, user) => json(`${base}/api/users/${user}/summary`),
  (base, user) =>
    json(`${base}/api/workouts`, {
      method: 'POST',
      json: { userId: user, kind: 'run', startedAt: '2026-12-01T07:00:00.000Z', sets: [{ exercise: 'km', reps: 5 }] },
    }),
  (base, user) => json(`${base}/api/users/${user}/workouts?limit=5`),
  (base, _user, workout) => json(`${base}/api/workouts/${workout ?? randomUUID()}`),
  (base, user) => json(`${base}/api/users/${user}/workouts/latest`),
  (base) => json(`${base}/api/users`, { method: 'POST', json: { email: `load-${randomUUID()}@example.com`, name: 'Load' } }),
  (base, user) => json(`${base}/api/users/${user}/preferences`, { method: 'PATCH', json: { weeklyGoal: 3 } }),
];

/** Runs the load against the gateway at `base`; resolves when every request has answered. */
export async function mixedLoad(
  base: string,
  { requests, concurrency, users = 7 }: { requests: number; concurrency: number; users?: number },
) {
  const ids: string[] = [];
  for (let i = 0; i < users; i++) {
    const res = await json(`${base}/api/users`, { method: 'POST', json: { email: `load-${randomUUID()}@example.com`, name: `User ${i}` } });
    if (res.status !== 201) throw new Error(`creating a user answered ${res.status}: ${res.text}`);
    ids.push(res.body.id);
  }
  const result: LoadResult = { statuses: {}, failures: {} };
  let workout: string | undefined;
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < requests; i = next++) {
      const res = await STEPS[i % STEPS.length]!(base, ids[i % ids.length]!, workout);
      result.statuses[res.status] = (result.statuses[res.status] ?? 0) + 1;
      if (res.status === 201 && res.body?.sets) workout = res.body.id;
      if (res.status >= 300 && res.status !== 404) {
        const key = `${res.status} ${res.body?.code ?? res.body?.error?.code ?? '?'}`;
        result.failures[key] = (result.failures[key] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return result;
}
