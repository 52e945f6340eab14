/**
 * The one logging interface of generic code: `log(msg, fields?, level?)`. A runtime entry makes
 * it with `createLog` (LOG_LEVEL filters, a writer prints), and every line it writes is one JSON
 * object — `time` (ISO 8601), `level`, `msg`, then the fields (`event`, `requestId`, `route`, …) —
 * on Node (pino, src/runtime/node-log.ts) and at the edge (console.log) alike.
 *
 * A plain `(line: string) => void` is a `Log` too (its lines count as `info`), so callers and tests
 * that only collect text keep working; code that must not build a line it will not write (one per
 * request at `debug`) asks `logs(log, level)` first.
 */

/** The levels LOG_LEVEL takes, least severe first; `silent` writes nothing. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
/** The level of one line. */
export type EntryLevel = Exclude<LogLevel, 'silent'>;

const RANK: Record<LogLevel, number> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, silent: Infinity };

export type LogFields = Record<string, unknown>;

/** One written line, before serialisation. */
export interface LogRecord extends LogFields {
  time: string;
  level: EntryLevel;
  msg: string;
}

export interface Log {
  (msg: string, fields?: LogFields, level?: EntryLevel): void;
  /** The least severe level written; absent (a plain function): `info`. */
  readonly level?: LogLevel;
}

/** Whether `log` writes lines at `level` (false without a log). */
export const logs = (log: Log | undefined, level: EntryLevel): boolean => log !== undefined && RANK[level] >= RANK[log.level ?? 'info'];

/** LOG_LEVEL's value, or undefined when it is not one of LOG_LEVELS. `warning` is taken for `warn`. */
export function parseLogLevel(raw: string): LogLevel | undefined {
  const level = raw.trim().toLowerCase();
  if (level === 'warning') return 'warn';
  return (LOG_LEVELS as readonly string[]).includes(level) ? (level as LogLevel) : undefined;
}

/**
 * A `Log` that writes the lines at `level` or above through `write`.
 * @example const log = createLog('info', (r) => console.log(jsonLine(r))); log('pool ready', { event: 'pool.ready', max: 20 });
 */
export function createLog(level: LogLevel, write: (record: LogRecord) => void, clock: () => Date = () => new Date()): Log {
  const least = RANK[level];
  const log = (msg: string, fields?: LogFields, at: EntryLevel = 'info') => {
    if (RANK[at] < least) return;
    // time, level and msg first, and a field can never replace them.
    const record = { time: clock().toISOString(), level: at, msg } as LogRecord;
    if (fields) for (const key in fields) if (key !== 'time' && key !== 'level' && key !== 'msg') record[key] = fields[key];
    write(record);
  };
  return Object.defineProperty(log, 'level', { value: level, enumerable: true });
}

/** Values JSON cannot carry as they are: bigint as a string, an Error as its name, message and code. */
function jsonValue(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return { name: value.name, message: value.message, ...(code !== undefined ? { code } : {}) };
  }
  return value;
}

/** One record as one line of JSON (no newline in it: JSON escapes them inside strings). */
export const jsonLine = (record: LogRecord): string => JSON.stringify(record, jsonValue);

const LABEL: Record<EntryLevel, string> = { trace: 'TRACE', debug: 'DEBUG', info: 'INFO ', warn: 'WARN ', error: 'ERROR' };

/**
 * One record for a person at a terminal (`npm start`): its message as it reads — every message is
 * written to stand on its own — with `WARN ` / `ERROR ` in front when it is one; at debug and trace
 * the fields follow as key=value.
 */
export function prettyLine(record: LogRecord): string {
  const { time: _time, level, msg, event: _event, ...fields } = record;
  const prefix = level === 'warn' || level === 'error' ? `${LABEL[level].trim()} ` : '';
  if (level !== 'debug' && level !== 'trace') return `${prefix}${msg}`;
  const rest = Object.entries(fields)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/[\s"=]/.test(v) ? v : JSON.stringify(v, jsonValue)}`)
    .join(' ');
  return `${msg}${rest ? `  ${rest}` : ''}`;
}

/**
 * The edge's `Log` (workerd, Deno): the same records, one JSON line each through console.log,
 * which the platform collects.
 */
export const consoleLog = (level: LogLevel): Log => createLog(level, (record) => console.log(jsonLine(record)));
