/**
 * SIGINT, SIGTERM and SIGHUP for a process that stops itself gracefully (`npm start`): the first
 * one asks for the stop, a second one exits at once with 128 + its number (130 for Ctrl-C).
 */
import { constants } from 'node:os';

export const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type StopSignal = (typeof STOP_SIGNALS)[number];

export interface StopSignalsOptions {
  /**
   * A repeat sooner than this is the same Ctrl-C arriving twice, not a second one: the terminal
   * signals its whole foreground process group, and tsx's parent process relays the signal to
   * its child again when the child's acknowledgement did not reach it within 30 ms.
   */
  repeatWindowMs?: number;
  /** Where the forced exit is announced. */
  log?: (line: string) => void;
}

/**
 * @example onStopSignals((signal) => void topology.close().then(() => process.exit(0)));
 */
export function onStopSignals(stop: (signal: StopSignal) => void, options: StopSignalsOptions = {}): void {
  const repeatWindowMs = options.repeatWindowMs ?? 500;
  const log = options.log ?? ((line: string) => console.error(line));
  let firstAt: number | undefined;
  const onSignal = (signal: StopSignal) => {
    const now = performance.now();
    if (firstAt === undefined) {
      firstAt = now;
      stop(signal);
    } else if (now - firstAt >= repeatWindowMs) {
      const code = 128 + constants.signals[signal];
      log(`poolgate: ${signal} again; exiting now without finishing the shutdown (exit code ${code})`);
      process.exit(code);
    }
  };
  for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
}
