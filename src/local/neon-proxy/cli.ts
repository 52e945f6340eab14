/**
 * `poolgate neon-proxy`: runs the local Neon-compatible proxy until SIGINT/SIGTERM, so an app
 * using `@neondatabase/serverless` can be developed against a local Postgres. Prints one line
 * with the listening address (never a password); bad arguments are one line on stderr and exit 1.
 * Log lines go to stderr at LOG_LEVEL (silent, info — the default — or debug; `--verbose` = debug).
 *
 *   npx tsx src/local/neon-proxy/cli.ts --database-url postgres://postgres@127.0.0.1:5432/app [--port 4444] [--host 127.0.0.1]
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startNeonProxy, type NeonProxy } from './server.js';
import { TargetError, describeTarget, parseAllowedTargets } from './targets.js';

const USAGE =
  'usage: poolgate neon-proxy --database-url <postgres://…> [--database-url <url>] [--port 4444] [--host 127.0.0.1] [--allow-origin <http://…>] [--verbose]';

class UsageError extends Error {}

interface CliArgs {
  databaseUrls: string[];
  port: number;
  host: string;
  /** Browser origins allowed besides callers without an Origin (servers). */
  allowedOrigins: string[];
  logLevel: 'silent' | 'info' | 'debug';
}

/**
 * Runs the proxy CLI with the arguments after `neon-proxy`; resolves with the exit code once a
 * signal has closed the proxy (0), or at once on bad arguments or a failed start (1).
 * @example process.exit(await runNeonProxyCli(process.argv.slice(2)));
 */
export async function runNeonProxyCli(argv: string[], env: Record<string, string | undefined> = process.env): Promise<number> {
  let args: CliArgs;
  try {
    args = parseCliArgs(argv, env);
  } catch (err) {
    const reason = err instanceof UsageError || err instanceof TargetError ? err.message : describeParseError(err);
    console.error(`neon-proxy: ${reason} (${USAGE})`);
    return 1;
  }
  let proxy: NeonProxy;
  try {
    proxy = await startNeonProxy({
      databaseUrls: args.databaseUrls,
      port: args.port,
      host: args.host,
      allowedOrigins: args.allowedOrigins,
      log: (line) => console.error(line),
      logLevel: args.logLevel,
    });
  } catch (err) {
    console.error(
      `neon-proxy: could not listen on ${args.host}:${args.port} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    );
    return 1;
  }
  const targets = parseAllowedTargets(args.databaseUrls).map(describeTarget).join(', ');
  console.log(`neon-proxy: listening on ${proxy.url} (HTTP ${proxy.url}/sql, WebSocket ${proxy.host}:${proxy.port}/v2) for ${targets}`);

  // Listeners stay installed while closing: a second signal (a process group's, or one relayed
  // by tsx/npm) must not kill the process half-way through close().
  let onSignal: ((signal: NodeJS.Signals) => void) | undefined;
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    onSignal = resolve;
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  console.log(`neon-proxy: ${signal}, closing`);
  await proxy.close();
  process.off('SIGINT', onSignal!);
  process.off('SIGTERM', onSignal!);
  console.log('neon-proxy: closed');
  return 0;
}

function parseCliArgs(argv: string[], env: Record<string, string | undefined>): CliArgs {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      'database-url': { type: 'string', multiple: true },
      port: { type: 'string' },
      host: { type: 'string' },
      'allow-origin': { type: 'string', multiple: true },
      verbose: { type: 'boolean' },
    },
    strict: true,
    allowPositionals: true,
  });
  if (positionals.length > 0) throw new UsageError(`unexpected argument #${argv.indexOf(positionals[0]!) + 1}`);
  const databaseUrls = values['database-url'] ?? (env.DATABASE_URL ? [env.DATABASE_URL] : []);
  if (databaseUrls.length === 0) throw new UsageError('no database: pass --database-url or set DATABASE_URL');
  parseAllowedTargets(databaseUrls); // fails early, naming the entry by position only
  const port = values.port === undefined ? 4444 : Number(values.port);
  if (!/^\d+$/.test(values.port ?? '4444') || port > 65535) throw new UsageError('--port must be a number from 0 to 65535');
  const host = values.host ?? '127.0.0.1';
  if (!host) throw new UsageError('--host must not be empty');
  const logLevel = values.verbose ? 'debug' : env.LOG_LEVEL?.trim() || 'info';
  if (logLevel !== 'silent' && logLevel !== 'info' && logLevel !== 'debug') throw new UsageError('LOG_LEVEL must be silent, info or debug');
  const allowedOrigins = values['allow-origin'] ?? [];
  for (const origin of allowedOrigins)
    if (!URL.canParse(origin) || !/^https?:$/.test(new URL(origin).protocol))
      throw new UsageError('--allow-origin must be an http(s) origin, e.g. http://127.0.0.1:8787');
  return { databaseUrls, port, host, allowedOrigins, logLevel };
}

/** parseArgs errors name the option, never its value; keep just the first sentence. */
function describeParseError(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.split('\n')[0]!.replace(/\. To specify.*$/, '');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runNeonProxyCli(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error('neon-proxy: failed', err);
      process.exit(1);
    },
  );
}
