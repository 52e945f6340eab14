/**
 * What poolgate's OpenTelemetry calls cost one request when no SDK is registered: the request
 * span (the api's no-op), three statements (startDbCall → nothing) and the span's end, against the
 * same loop without them, in this run. Prints ns per request and the bytes it allocates (heap
 * growth over a run short enough for no scavenge: --max-semi-space-size), and, as a yardstick run
 * alongside, one crypto.randomUUID() (what every request without an x-request-id pays already).
 * Run: node_modules/.bin/node --expose-gc --max-semi-space-size=256 --import tsx bench/otel-noop.ts
 */
import { endRequestSpan, startDbCall, startRequestSpan } from '../src/stats/otel.js';
import { now } from '../src/stats/clock.js';

const N = 200_000;
const getter = { keys: () => [], get: () => undefined };
const carrier = {};
const request = { url: 'http://x/api/users/1' };
const observer: { span?: ReturnType<typeof startRequestSpan> } = {};
let sink = 0;

function withOtel(): void {
  const span = (observer.span = startRequestSpan('GET', carrier, getter, request));
  for (let q = 0; q < 3; q++) {
    const call = startDbCall(observer, 'SELECT 1', 'postgres');
    sink += q;
    call?.end(1);
  }
  endRequestSpan(span, 'GET', '/api/users/:id', 200);
}

function without(): void {
  for (let q = 0; q < 3; q++) sink += q;
}

/** A reference of what every request costs already: its request id (connStats makes one when none came). */
function requestId(): void {
  sink += crypto.randomUUID().length;
}

function measure(fn: () => void): { ns: number; bytes: number } {
  for (let i = 0; i < 20_000; i++) fn(); // warm up
  (globalThis as { gc?: () => void }).gc?.();
  const heap = process.memoryUsage().heapUsed;
  const t0 = now();
  for (let i = 0; i < N; i++) fn();
  const ms = now() - t0;
  return { ns: (ms * 1e6) / N, bytes: (process.memoryUsage().heapUsed - heap) / N };
}

const base = measure(without);
const otel = measure(withOtel);
const uuid = measure(requestId);
console.log(
  `no SDK: ${otel.ns.toFixed(1)} ns/request with the OpenTelemetry calls vs ${base.ns.toFixed(1)} without (+${(otel.ns - base.ns).toFixed(1)} ns); ` +
    `~${otel.bytes.toFixed(0)} B/request allocated vs ~${base.bytes.toFixed(0)}; ` +
    `that is ${((otel.ns - base.ns) / uuid.ns).toFixed(2)}× one crypto.randomUUID() (${uuid.ns.toFixed(1)} ns) (sink ${sink > 0})`,
);
