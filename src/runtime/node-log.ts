/**
 * The Node side's `Log` (src/log/logger.ts): one JSON object per line through pino (synchronous
 * writes to stdout, so a line written just before exit is not lost), or, for a person at a
 * terminal, one readable line each. LOG_FORMAT=auto (the default) picks pretty when stdout is a TTY.
 * The edge writes the same records with console.log (consoleLog, src/log/logger.ts).
 */
import { pino, type DestinationStream } from 'pino';
import { createLog, prettyLine, type Log, type LogLevel, type LogRecord } from '../log/logger.js';
import type { LogFormat } from '../config.js';

export interface NodeLogOptions {
  level: LogLevel;
  format: LogFormat;
  /** Where lines go, one string each without its newline (tests); default: stdout. */
  sink?: (line: string) => void;
  /** Whether the output is a terminal (LOG_FORMAT=auto); default: process.stdout.isTTY, or false with a sink. */
  tty?: boolean;
}

/**
 * @example const log = nodeLog({ level: config.logLevel, format: config.logFormat }); log('ready', { event: 'gateway.started', url });
 */
export function nodeLog({ level, format, sink, tty = !sink && process.stdout.isTTY === true }: NodeLogOptions): Log {
  if (level === 'silent') return createLog('silent', () => {});
  if (format === 'pretty' || (format === 'auto' && tty)) {
    const write = sink ?? ((line: string) => void process.stdout.write(`${line}\n`));
    return createLog(level, (record) => write(prettyLine(record)));
  }
  const destination: DestinationStream = sink
    ? { write: (chunk: string) => sink(chunk.endsWith('\n') ? chunk.slice(0, -1) : chunk) }
    : pino.destination({ dest: 1, sync: true });
  // Our Log filters by level and stamps the time; pino serialises and writes. No pid/hostname: the
  // platform's log pipeline adds where a line came from.
  const logger = pino(
    { level: 'trace', base: undefined, timestamp: false, formatters: { level: (label) => ({ level: label }) } },
    destination,
  );
  return createLog(level, (record: LogRecord) => {
    const { level: at, msg, ...fields } = record;
    logger[at](fields, msg);
  });
}
