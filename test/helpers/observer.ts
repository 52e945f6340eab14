/**
 * A QueryObserver that records what the core told it (which clients served, acquisitions, retries),
 * for tests that drive a Database directly; and the AppError a piece of work rejects with.
 */
import { expect } from 'vitest';
import type { ClientKind, QueryObserver } from '../../src/db/types.js';
import { AppError } from '../../src/errors.js';

export interface RecordingObserver extends QueryObserver {
  served: (kind: ClientKind) => void;
  kinds: ClientKind[];
  acquisitions: number;
  retries: number;
}

export function recordingObserver(intent: QueryObserver['intent'], extra: Partial<QueryObserver> = {}): RecordingObserver {
  return {
    intent,
    ...extra,
    kinds: [],
    acquisitions: 0,
    retries: 0,
    acquired() {
      this.acquisitions++;
    },
    queried() {},
    served(kind: ClientKind) {
      this.kinds.push(kind);
    },
    retried() {
      this.retries++;
    },
  };
}

/** The AppError `work` rejects with (fails the test when it resolves or rejects with something else). */
export async function appErrorOf(work: Promise<unknown>): Promise<AppError> {
  const error = await work.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(AppError);
  return error as AppError;
}
