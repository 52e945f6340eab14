/**
 * The `poolgate` command (package.json "bin" → src/bin/poolgate.mjs → here); `stats` and `doctor`
 * live in cli/. Exit codes: 0 done,
 * 1 the command failed (one line on stderr saying why), 2 the command line itself is wrong (one
 * line naming the problem, then the usage). Commands load only what they use, so `--help` and a
 * typo answer at once.
 */
import { readFile, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import type { MigrationReport } from './db/migrate.js';
import type { PoolgateApp } from './definition.js';
import type { LoadedApp } from './local/dev.js';

const USAGE = `usage: poolgate <command> [options]

commands:
  migrate [--app <module>]   apply poolgate's tables and the app's migrations to DATABASE_URL
  serve --app <module>       run the Node gateway for the app (configured by the environment: DATABASE_URL, PORT, …)
  dev --app <module>         run the app locally until Ctrl-C: embedded PGlite (or DATABASE_URL), the local
                             Neon proxy (NEON_PROXY_PORT, 4444), the Node gateway (NODE_PORT, 8788) and the
                             edge in workerd (EDGE_PORT, 8787); needs esbuild and miniflare installed
  neon-proxy --database-url <url> [--port 4444] [--host 127.0.0.1] [--verbose]
                             a local Neon-compatible proxy in front of PostgreSQL
  stats <url> [--watch] [--interval <ms>] [--token <OPS_TOKEN>]
                             a running gateway's /stats as text: per route rate, p50/p99, DB time,
                             acquire wait, clients; pool, breakers, cache hits; --watch refreshes
                             every --interval ms (2000) until Ctrl-C; the token defaults to OPS_TOKEN
  doctor [--app <module>] [--instances <n>]
                             check this environment as the gateway reads it and the database it names
                             (connection variables, reachability, TLS, pooler, max_connections vs
                             instances × POOL_MAX, migrations, clock skew, FORWARD_SECRET); a checklist
                             with a fix per line, exit 1 if any ✗
  help                       show this text

options:
  --app <module>   the app's module, relative to the current folder (.js, .mjs or .ts, the last
                   loaded with Node's type stripping); its default export or its export named "app",
                   as made by defineApp
  -h, --help       show this text
  -v, --version    print poolgate's version
`;

/** Where the command writes its own lines, and what it reads; `serve`, `dev` and `neon-proxy` log to the console as they always do. */
export interface CliIo {
  /** `isTTY`: `stats --watch` redraws the screen on a terminal. */
  stdout: { write(text: string): unknown; isTTY?: boolean };
  stderr: { write(text: string): unknown };
  /** The environment `migrate`, `doctor`, `stats` (OPS_TOKEN) and `neon-proxy` read (`serve` and `dev` read process.env); default: process.env. */
  env?: Record<string, string | undefined>;
  /** Where `--app` paths start from; default: process.cwd(). */
  cwd?: string;
}

/** The command line is wrong: exit 2 with the usage. */
class UsageError extends Error {}
/** The command could not do its work: exit 1, its message the one line (from "poolgate: "). */
class CommandError extends Error {}

/**
 * Runs `poolgate <argv…>`; resolves with the exit code (for `serve` and `dev`, once they run).
 * @example process.exitCode = await runCli(process.argv.slice(2));
 */
export async function runCli(argv: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const say = (line: string) => void io.stdout.write(`${line}\n`);
  const fail = (line: string) => void io.stderr.write(`${line}\n`);
  // The proxy parses its own options (and prints its own usage).
  if (argv[0] === 'neon-proxy') {
    const { runNeonProxyCli } = await import('./local/neon-proxy/cli.js');
    return runNeonProxyCli(argv.slice(1), io.env ?? process.env);
  }
  let command: Command;
  try {
    command = parseCommand(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    fail(`poolgate: ${err.message}`);
    io.stderr.write(`\n${USAGE}`);
    return 2;
  }
  try {
    switch (command.name) {
      case 'help':
        io.stdout.write(USAGE);
        return 0;
      case 'version':
        say(await packageVersion());
        return 0;
      case 'migrate':
        say(await migrateCommand(command.app, io));
        return 0;
      case 'serve':
        await serveCommand(command.app, io);
        return 0;
      case 'dev':
        await devCommand(command.app, io);
        return 0;
      case 'stats':
        return await statsCommand(command, io);
      case 'doctor':
        return await doctorCommand(command, io);
    }
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    fail(err.message);
    return 1;
  }
}

type Command =
  | { name: 'help' | 'version' }
  | { name: 'migrate'; app: string | undefined }
  | { name: 'serve' | 'dev'; app: string }
  | StatsCommand
  | DoctorCommand;

interface StatsCommand {
  name: 'stats';
  url: string;
  watch: boolean;
  intervalMs: number;
  token: string | undefined;
}

interface DoctorCommand {
  name: 'doctor';
  app: string | undefined;
  instances: number;
}

/** Which options each command takes (--help and --version go with any). */
const COMMAND_OPTIONS: Record<string, string[]> = {
  migrate: ['app'],
  serve: ['app'],
  dev: ['app'],
  stats: ['watch', 'interval', 'token'],
  doctor: ['app', 'instances'],
};

/** A whole number in [min, max] given to `option`, or a UsageError naming it. */
function wholeNumber(option: string, raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max)
    throw new UsageError(`${option} must be a whole number from ${min} to ${max}, got "${raw}"`);
  return Number(raw);
}

function parseCommand(argv: string[]): Command {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        app: { type: 'string' },
        watch: { type: 'boolean' },
        interval: { type: 'string' },
        token: { type: 'string' },
        instances: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (err) {
    // parseArgs names the option, and its first sentence is the whole story.
    const message = err instanceof Error ? err.message : String(err);
    throw new UsageError(message.split(/\.\s|\n/)[0]!.replace(/\.$/, ''));
  }
  const { values, positionals } = parsed;
  const [name, ...rest] = positionals;
  if (values.help || name === 'help') return { name: 'help' };
  if (values.version) return { name: 'version' };
  if (name === undefined) throw new UsageError('no command given');
  const allowed = Object.hasOwn(COMMAND_OPTIONS, name) ? COMMAND_OPTIONS[name] : undefined;
  if (!allowed) throw new UsageError(`unknown command "${name}"`);
  const foreign = Object.keys(values).find((option) => option !== 'help' && option !== 'version' && !allowed.includes(option));
  if (foreign) throw new UsageError(`${name} takes no --${foreign}`);
  if (values.app === '') throw new UsageError('--app needs a module path');
  if (name === 'stats') {
    const [url, ...more] = rest;
    if (url === undefined) throw new UsageError("stats needs the gateway's URL (e.g. poolgate stats http://127.0.0.1:8788)");
    if (more.length > 0) throw new UsageError(`unexpected argument "${more[0]}" after stats <url>`);
    return {
      name,
      url,
      watch: values.watch ?? false,
      intervalMs: values.interval === undefined ? 2_000 : wholeNumber('--interval', values.interval, 100, 3_600_000),
      token: values.token,
    };
  }
  if (rest.length > 0) throw new UsageError(`unexpected argument "${rest[0]}" after ${name}`);
  if (name === 'doctor')
    return {
      name,
      app: values.app,
      instances: values.instances === undefined ? 1 : wholeNumber('--instances', values.instances, 1, 100_000),
    };
  if (name === 'migrate') return { name, app: values.app };
  if (name !== 'serve' && name !== 'dev') throw new UsageError(`unknown command "${name}"`);
  if (values.app === undefined) throw new UsageError(`${name} needs --app <module> (the app to ${name === 'serve' ? 'serve' : 'run'})`);
  return { name, app: values.app };
}

async function migrateCommand(appModule: string | undefined, io: CliIo): Promise<string> {
  const app = appModule === undefined ? undefined : await loadApp(appModule, io.cwd ?? process.cwd());
  const [{ runMigrations }, { startupErrorLine }, { MigrationError }] = await Promise.all([
    import('./runtime/migrate.js'),
    import('./runtime/node.js'),
    import('./db/migrate.js'),
  ]);
  let report: MigrationReport;
  try {
    report = await runMigrations(io.env ?? process.env, app);
  } catch (err) {
    throw new CommandError(err instanceof MigrationError ? `poolgate: ${err.message}` : startupErrorLine(err));
  }
  // Warnings go to stderr and the command still succeeds: an edited applied migration is never run again.
  for (const warning of report.warnings) io.stderr.write(`poolgate: warning: ${warning}\n`);
  return report.applied.length ? `poolgate: applied migrations ${report.applied.join(', ')}` : 'poolgate: schema up to date';
}

/** `poolgate stats <url>`: once, or until SIGINT/SIGTERM with --watch. */
async function statsCommand(command: StatsCommand, io: CliIo): Promise<number> {
  const { watchStats } = await import('./cli/stats-watch.js');
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once('SIGINT', onSignal).once('SIGTERM', onSignal);
  try {
    return await watchStats({
      url: command.url,
      token: command.token ?? ((io.env ?? process.env).OPS_TOKEN?.trim() || undefined),
      watch: command.watch,
      intervalMs: command.intervalMs,
      out: io.stdout,
      err: io.stderr,
      signal: stop.signal,
    });
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
  }
}

/** `poolgate doctor`: the checklist on stdout; exit 1 when any check failed. */
async function doctorCommand(command: DoctorCommand, io: CliIo): Promise<number> {
  const app = command.app === undefined ? undefined : await loadApp(command.app, io.cwd ?? process.cwd());
  const { exitCodeOf, formatFindings, runDoctor } = await import('./cli/doctor.js');
  const findings = await runDoctor({ env: io.env ?? process.env, instances: command.instances, app, appModule: command.app });
  io.stdout.write(formatFindings(findings, command.instances));
  return exitCodeOf(findings);
}

/** `runGateway` starts the gateway from the environment, handles SIGTERM/SIGINT and exits 1 on a failed start. */
async function serveCommand(appModule: string, io: CliIo): Promise<void> {
  const app = await loadApp(appModule, io.cwd ?? process.cwd());
  const { runGateway } = await import('./runtime/node.js');
  await runGateway(app);
}

/**
 * `poolgate dev`: its optional peers are checked before the app is even loaded; then the topology
 * (which handles Ctrl-C and exits 1 with one line on a failed start) runs until stopped.
 */
async function devCommand(appModule: string, io: CliIo): Promise<void> {
  const { missingPeersLine, runDev } = await import('./local/dev.js');
  const missing = missingPeersLine(process.env, (await packageJson()).peerDependencies ?? {});
  if (missing) throw new CommandError(missing);
  const cwd = io.cwd ?? process.cwd();
  await runDev(await loadAppModule(appModule, cwd), cwd);
}

/** Imports the module at `specifier` (relative to `cwd`) and returns its default export or its export `app`. */
async function loadApp(specifier: string, cwd: string): Promise<PoolgateApp> {
  return (await loadAppModule(specifier, cwd)).app;
}

/** `loadApp`, also saying where the module is and which export holds the app. */
async function loadAppModule(specifier: string, cwd: string): Promise<LoadedApp> {
  const path = resolve(cwd, specifier);
  const isFile = await stat(path).then(
    (s) => s.isFile(),
    () => false,
  );
  if (!isFile) throw new CommandError(`poolgate: no app module at ${specifier} (looked for ${path})`);
  let exports: Record<string, unknown>;
  try {
    exports = (await import(pathToFileURL(path).href)) as Record<string, unknown>;
  } catch (err) {
    const reason = err instanceof Error ? `${err.name}: ${err.message.split('\n')[0]}` : String(err);
    throw new CommandError(`poolgate: could not load the app module ${specifier} (${reason})`);
  }
  const exportName = exports.default === undefined || exports.default === null ? 'app' : 'default';
  const app = exports[exportName];
  if (typeof app !== 'object' || app === null || !Array.isArray((app as Partial<PoolgateApp>).routes)) {
    throw new CommandError(
      `poolgate: ${specifier} exports no poolgate app (expected a default export or an export named "app", made with defineApp)`,
    );
  }
  return { app: app as PoolgateApp, path, exportName };
}

interface PackageJson {
  name: string;
  version: string;
  peerDependencies?: Record<string, string>;
}

/** poolgate's package.json: one folder above src/cli.ts, two above dist/lib/cli.js. */
async function packageJson(): Promise<PackageJson> {
  for (const candidate of ['../package.json', '../../package.json']) {
    const text = await readFile(new URL(candidate, import.meta.url), 'utf8').catch(() => undefined);
    const pkg = text === undefined ? undefined : (JSON.parse(text) as Partial<PackageJson>);
    if (pkg?.name === 'poolgate' && typeof pkg.version === 'string') return pkg as PackageJson;
  }
  throw new CommandError("poolgate: cannot find poolgate's package.json");
}

async function packageVersion(): Promise<string> {
  return (await packageJson()).version;
}
