import { describe, expect, it } from 'vitest';
import { LANE_QUEUE_MS, LaneLatency, SLOW_READ_MS } from './lane-latency.js';

const times = (latency: LaneLatency, key: string, ms: number, n: number) => {
  for (let i = 0; i < n; i++) latency.record(key, ms);
};

describe('LaneLatency: which reads may share a lane', () => {
  it('a read never seen is not slow; a slow text is slow from its second slow run (the first may plan)', () => {
    const latency = new LaneLatency();
    expect(latency.isSlow('SELECT a')).toBe(false);
    latency.record('SELECT a', 200);
    expect(latency.isSlow('SELECT a')).toBe(false);
    latency.record('SELECT a', 200);
    expect(latency.isSlow('SELECT a')).toBe(true);
  });

  it('fast reads stay on the lanes; a text that turns slow by much is slow at once, and comes back after a few fast runs', () => {
    const latency = new LaneLatency();
    times(latency, 'SELECT b', 0.5, 50);
    expect(latency.isSlow('SELECT b')).toBe(false);
    latency.record('SELECT b', 120);
    expect(latency.isSlow('SELECT b')).toBe(true);
    times(latency, 'SELECT b', 0.5, 12);
    expect(latency.isSlow('SELECT b')).toBe(false);
  });

  it('a text slow by much one time in ten stays slow', () => {
    const latency = new LaneLatency();
    for (let i = 0; i < 200; i++) latency.record('SELECT c', i % 10 === 0 ? 150 : 0.5);
    let slowAfterFast = 0;
    for (let i = 0; i < 10; i++) {
      latency.record('SELECT c', i === 0 ? 150 : 0.5);
      if (latency.isSlow('SELECT c')) slowAfterFast++;
    }
    expect(slowAfterFast).toBe(10);
  });

  it('on a busy machine, where every read waits 8–12 ms, no fast read is slow; one far slower than the others is', () => {
    const latency = new LaneLatency();
    expect(latency.slowLineMs()).toBe(SLOW_READ_MS);
    for (let i = 0; i < 2_000; i++) latency.record(`SELECT ${i % 20}`, 8 + (i % 5));
    expect(latency.slowLineMs()).toBeGreaterThan(12);
    expect(Array.from({ length: 20 }, (_, i) => latency.isSlow(`SELECT ${i}`))).not.toContain(true);
    expect(latency.queueLimitMs()).toBeGreaterThan(LANE_QUEUE_MS);
    times(latency, 'SELECT slow', 300, 2);
    expect(latency.isSlow('SELECT slow')).toBe(true);
  });

  it('a lag spike does not make a fast text slow', () => {
    const latency = new LaneLatency();
    times(latency, 'SELECT d', 1, 50);
    latency.record('SELECT d', 20);
    expect(latency.isSlow('SELECT d')).toBe(false);
  });

  it('slow reads among fast ones do not raise the line to their level', () => {
    const latency = new LaneLatency();
    for (let i = 0; i < 3_000; i++) latency.record(i % 10 === 0 ? 'SELECT sleep' : `SELECT ${i % 7}`, i % 10 === 0 ? 300 : 1);
    expect(latency.slowLineMs()).toBeLessThan(50);
    expect(latency.isSlow('SELECT sleep')).toBe(true);
  });

  it('slow reads that are most of the reads, or all of them, stay slow: a busy machine raises the line to 4 configured lines at most', () => {
    const mostly = new LaneLatency();
    for (let i = 0; i < 3_000; i++) mostly.record(i % 3 === 0 ? `SELECT ${i % 7}` : 'SELECT sleep', i % 3 === 0 ? 1 : 50);
    expect(mostly.isSlow('SELECT sleep')).toBe(true);
    const only = new LaneLatency();
    times(only, 'SELECT sleep', 50, 1_000);
    expect(only.isSlow('SELECT sleep')).toBe(true);
    expect(only.slowLineMs()).toBe(4 * SLOW_READ_MS);
  });

  it('a configured line of 60 s keeps every read on the lanes', () => {
    const latency = new LaneLatency(60_000);
    times(latency, 'SELECT e', 300, 20);
    expect(latency.isSlow('SELECT e')).toBe(false);
  });
});
