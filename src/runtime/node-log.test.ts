/** The Node writer: pino's JSON lines of the same shape as the edge's, pretty at a terminal, nothing when silent. */
import { describe, expect, it } from 'vitest';
import { nodeLog } from './node-log.js';

function lines(options: Omit<Parameters<typeof nodeLog>[0], 'sink'>): string[] {
  const out: string[] = [];
  const log = nodeLog({ ...options, sink: (l) => out.push(l) });
  log('poolgate: hello', { event: 'hello', requestId: 'r-1' });
  log('poolgate: careful', { event: 'careful' }, 'warn');
  log('poolgate: detail', { event: 'detail', n: 1 }, 'debug');
  return out;
}

describe('nodeLog', () => {
  it('JSON (not a terminal): one object per line, time, level and msg, the fields, filtered by level', () => {
    const out = lines({ level: 'info', format: 'auto', tty: false });
    expect(out).toHaveLength(2);
    const [first, second] = out.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(first).toEqual({ level: 'info', time: expect.any(String), event: 'hello', requestId: 'r-1', msg: 'poolgate: hello' });
    expect(new Date(first!.time as string).toISOString()).toBe(first!.time);
    expect(second).toMatchObject({ level: 'warn', msg: 'poolgate: careful' });
  });

  it('pretty at a terminal (or LOG_FORMAT=pretty), JSON with LOG_FORMAT=json even there', () => {
    expect(lines({ level: 'debug', format: 'auto', tty: true })).toEqual([
      'poolgate: hello',
      'WARN poolgate: careful',
      'poolgate: detail  n=1',
    ]);
    expect(lines({ level: 'info', format: 'pretty', tty: false })).toEqual(['poolgate: hello', 'WARN poolgate: careful']);
    expect(JSON.parse(lines({ level: 'info', format: 'json', tty: true })[0]!)).toMatchObject({ msg: 'poolgate: hello' });
  });

  it("a sink of the embedder's (GatewayOptions.log) gets JSON at LOG_FORMAT=auto, even when this process's stdout is a terminal", () => {
    const was = Object.getOwnPropertyDescriptor(process.stdout, 'isTTY');
    Object.defineProperty(process.stdout, 'isTTY', { value: true, configurable: true });
    try {
      expect(JSON.parse(lines({ level: 'info', format: 'auto' })[0]!)).toMatchObject({ msg: 'poolgate: hello' });
    } finally {
      if (was) Object.defineProperty(process.stdout, 'isTTY', was);
      else delete (process.stdout as { isTTY?: boolean }).isTTY;
    }
  });

  it('writes nothing at silent', () => {
    expect(lines({ level: 'silent', format: 'json' })).toEqual([]);
  });
});
