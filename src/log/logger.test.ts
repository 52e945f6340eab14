/** The logging interface on its own: levels, the record's shape, JSON and pretty lines. */
import { describe, expect, it, vi } from 'vitest';
import { consoleLog, createLog, jsonLine, LOG_LEVELS, logs, parseLogLevel, prettyLine, type LogRecord } from './logger.js';

const at = new Date('2026-12-07T14:05:09.123Z');

function collect(level: Parameters<typeof createLog>[0]) {
  const records: LogRecord[] = [];
  const log = createLog(
    level,
    (r) => records.push(r),
    () => at,
  );
  return { log, records };
}

describe('createLog', () => {
  it('writes time, level and msg first, then the fields, and a field cannot replace them', () => {
    const { log, records } = collect('info');
    log('pool ready', { event: 'pool.ready', max: 20, msg: 'forged', level: 'error', time: 'never' }, 'warn');
    expect(records).toEqual([{ time: '2026-12-07T14:05:09.123Z', level: 'warn', msg: 'pool ready', event: 'pool.ready', max: 20 }]);
    expect(Object.keys(records[0]!).slice(0, 3)).toEqual(['time', 'level', 'msg']);
  });

  it('writes a line without a level at info', () => {
    const { log, records } = collect('info');
    log('hello');
    expect(records.map((r) => r.level)).toEqual(['info']);
  });

  it.each([
    ['trace', ['trace', 'debug', 'info', 'warn', 'error']],
    ['debug', ['debug', 'info', 'warn', 'error']],
    ['info', ['info', 'warn', 'error']],
    ['warn', ['warn', 'error']],
    ['error', ['error']],
    ['silent', []],
  ] as const)('at LOG_LEVEL=%s writes %j', (level, written) => {
    const { log, records } = collect(level);
    for (const l of ['trace', 'debug', 'info', 'warn', 'error'] as const) log(l, {}, l);
    expect(records.map((r) => r.level)).toEqual(written);
    for (const l of ['trace', 'debug', 'info', 'warn', 'error'] as const)
      expect(logs(log, l)).toBe((written as readonly string[]).includes(l));
  });

  it('takes a plain function for a log at info, and no log for none', () => {
    const plain = (_line: string) => {};
    expect(logs(plain, 'info')).toBe(true);
    expect(logs(plain, 'debug')).toBe(false);
    expect(logs(undefined, 'error')).toBe(false);
  });
});

describe('parseLogLevel', () => {
  it('takes every level, in any case, and warning for warn', () => {
    for (const level of LOG_LEVELS) expect(parseLogLevel(` ${level.toUpperCase()} `)).toBe(level);
    expect(parseLogLevel('warning')).toBe('warn');
    expect(parseLogLevel('loud')).toBeUndefined();
    expect(parseLogLevel('')).toBeUndefined();
  });
});

describe('lines', () => {
  const record: LogRecord = {
    time: at.toISOString(),
    level: 'error',
    msg: 'a "quoted"\nline',
    requestId: 'r-1',
    n: 12n,
    err: Object.assign(new Error('boom'), { code: '08006' }),
  };

  it('JSON: one line that parses back, bigint as a string, an Error as name, message and code', () => {
    const line = jsonLine(record);
    expect(line).not.toContain('\n');
    expect(JSON.parse(line)).toEqual({
      time: '2026-12-07T14:05:09.123Z',
      level: 'error',
      msg: 'a "quoted"\nline',
      requestId: 'r-1',
      n: '12',
      err: { name: 'Error', message: 'boom', code: '08006' },
    });
  });

  it('pretty: the message as it reads, WARN/ERROR in front, the fields only at debug and trace', () => {
    const base = { time: at.toISOString(), event: 'x', msg: 'ready', url: 'http://127.0.0.1:1', note: 'two words', gone: undefined };
    expect(prettyLine({ ...base, level: 'info' })).toBe('ready');
    expect(prettyLine({ ...base, level: 'warn' })).toBe('WARN ready');
    expect(prettyLine({ ...base, level: 'error' })).toBe('ERROR ready');
    expect(prettyLine({ ...base, level: 'debug' })).toBe('ready  url=http://127.0.0.1:1 note="two words"');
  });

  it('the edge writes the same records as JSON lines on console.log', () => {
    const spy = vi.spyOn(console, 'log').mockImplementation(() => {});
    try {
      consoleLog('warn')('dropped', {}, 'info');
      consoleLog('warn')('kept', { event: 'x' }, 'warn');
      expect(spy).toHaveBeenCalledTimes(1);
      expect(JSON.parse(spy.mock.calls[0]![0] as string)).toMatchObject({ level: 'warn', msg: 'kept', event: 'x' });
    } finally {
      spy.mockRestore();
    }
  });
});
