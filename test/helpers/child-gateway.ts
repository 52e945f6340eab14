/**
 * The Node gateway as a real child process: `node --import tsx src/fitness/entries/node.ts`, exactly what
 * `npm run start:node` runs, without npx in between so a signal reaches the gateway itself.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { TestDatabase } from './db.js';
import { uniqueName } from './gateway.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface ChildGateway {
  url: string;
  child: ChildProcess;
  applicationName: string;
  output: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export async function spawnGateway(db: TestDatabase, env: Record<string, string>): Promise<ChildGateway> {
  const applicationName = uniqueName('poolgate-child');
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/fitness/entries/node.ts'], {
    cwd: ROOT,
    env: {
      ...process.env,
      DATABASE_URL: db.url,
      PORT: '0',
      HOST: '127.0.0.1',
      APPLICATION_NAME: applicationName,
      POOLGATE_ENV: '',
      FORWARD_SECRET: '',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the gateway did not start in 20 s:\n${output.join('')}`)), 20_000);
    const onData = (chunk: Buffer) => {
      output.push(chunk.toString());
      const m = /Node gateway on (http:\/\/[\d.]+:\d+)/.exec(output.join(''));
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (c: Buffer) => output.push(c.toString()));
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`the gateway exited (${code ?? signal}) before listening:\n${output.join('')}`));
    });
  });
  return { url, child, applicationName, output, exited };
}
