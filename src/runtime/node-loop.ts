/**
 * Node's event loop, as the admission gates read it: the time it spent running callbacks (event
 * loop utilisation's `active`), which is the process's own work and not a wait on the pool.
 */
import { performance } from 'node:perf_hooks';
import type { LoopMeter } from '../resilience/gate.js';

export const nodeLoop: LoopMeter = { busyMs: () => performance.eventLoopUtilization().active };
