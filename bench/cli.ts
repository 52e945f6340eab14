/** What the bench programs share on the command line: `--quick` / `--help`, and running `main` as the program. */
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

/** The pass `--quick` asks for, or the exit code after printing the usage (`--help`) or a bad argument. */
export function quickOrExit(name: string, usage: string): 'quick' | 'full' | number {
  let values;
  try {
    values = parseArgs({ options: { quick: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } }).values;
  } catch (err) {
    console.error(`${name}: ${(err as Error).message}\n${usage}`);
    return 2;
  }
  if (values.help) {
    console.log(usage);
    return 0;
  }
  return values.quick ? 'quick' : 'full';
}

/** Runs `main` when the module at `moduleUrl` is the program (not when a test imports it), exiting with its code. */
export function runIfMain(moduleUrl: string, main: () => Promise<number>): void {
  if (!process.argv[1] || fileURLToPath(moduleUrl) !== process.argv[1]) return;
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
