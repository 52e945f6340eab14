/**
 * A mixed load on the fitness API over real HTTP (the mix itself: bench/fitness-mix.ts, shared
 * with the bench): users created first, then `requests` requests with `concurrency` in flight,
 * cycling through every kind of route. Answers counted by status, with the error codes of whatever
 * was not 2xx/404, so a test can say what went wrong, not only that it did.
 */
import { createUserCall, fitnessCall, MIX_USERS, type FitnessCall } from '../../bench/fitness-mix.js';
import { json } from './gateway.js';

export interface LoadResult {
  /** Requests per HTTP status. */
  statuses: Record<number, number>;
  /** `<status> <code>` per answer that was neither 2xx nor 404, counted. */
  failures: Record<string, number>;
}

const send = (base: string, call: FitnessCall) =>
  json(`${base}${call.path}`, { method: call.method, ...(call.body === undefined ? {} : { json: call.body }) });

/** Runs the load against the gateway at `base`; resolves when every request has answered. */
export async function mixedLoad(
  base: string,
  { requests, concurrency, users = MIX_USERS }: { requests: number; concurrency: number; users?: number },
) {
  const ids: string[] = [];
  for (let i = 0; i < users; i++) {
    const res = await send(base, createUserCall(`User ${i}`));
    if (res.status !== 201) throw new Error(`creating a user answered ${res.status}: ${res.text}`);
    ids.push(res.body.id);
  }
  const result: LoadResult = { statuses: {}, failures: {} };
  let workout: string | undefined;
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < requests; i = next++) {
      const call = fitnessCall(i, ids, workout);
      const res = await send(base, call);
      result.statuses[res.status] = (result.statuses[res.status] ?? 0) + 1;
      if (res.status === 201 && call.kind === 'create-workout') workout = res.body.id;
      if (res.status >= 300 && res.status !== 404) {
        const key = `${res.status} ${res.body?.code ?? res.body?.error?.code ?? '?'}`;
        result.failures[key] = (result.failures[key] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return result;
}
