/**
 * What stops a process that stops itself gracefully (`npm start`): SIGINT, SIGTERM and SIGHUP, and
 * the death of the process that started it. The first asks for the stop; a second signal exits at
 * once with 128 + its number (130 for Ctrl-C).
 *
 * Its parent is npm (`npm start` execs the topology) or tsx's CLI. When that is killed (SIGKILL, an
 * OOM kill) nothing tells the child: it is handed to init and would go on serving, holding the data
 * folder, the ports and workerd. Node has no PR_SET_PDEATHSIG, so the parent's pid is polled.
 */
import { constants } from 'node:os';

export const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type StopSignal = (typeof STOP_SIGNALS)[number];
/** Why the stop was asked for: a signal, or `parent-gone` (the process that started this one exited). */
export type StopReason = StopSignal | 'parent-gone';

export interface StopSignalsOptions {
  /**
   * A repeat sooner than this is the same Ctrl-C arriving twice, not a second one: the terminal
   * signals its whole foreground process group, and tsx's parent process relays the signal to
   * its child again when the child's acknowledgement did not reach it within 30 ms.
   */
  repeatWindowMs?: number;
  /** How often the parent's pid is checked; 0 does not watch it. */
  parentPollMs?: number;
  /** Where the forced exit is announced. */
  log?: (line: string) => void;
}

/**
 * @example onStopSignals((reason) => void topology.close().then(() => process.exit(0)));
 */
export function onStopSignals(stop: (reason: StopReason) => void, options: StopSignalsOptions = {}): void {
  const repeatWindowMs = options.repeatWindowMs ?? 500;
  const log = options.log ?? ((line: string) => console.error(line));
  let firstAt: number | undefined;
  const first = (reason: StopReason) => {
    if (firstAt !== undefined) return false;
    firstAt = performance.now();
    stop(reason);
    return true;
  };
  const onSignal = (signal: StopSignal) => {
    if (first(signal) || performance.now() - firstAt! < repeatWindowMs) return;
    const code = 128 + constants.signals[signal];
    log(`poolgate: ${signal} again; exiting now without finishing the shutdown (exit code ${code})`);
    process.exit(code);
  };
  for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
  if (options.parentPollMs) onParentGone(() => first('parent-gone'), options.parentPollMs);
}

/** Calls `gone` once the parent process has exited (this process was handed to another). */
function onParentGone(gone: () => void, pollMs: number): void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    gone();
  }, pollMs);
  timer.unref();
}
