#!/usr/bin/env node
// `poolgate` command (package.json "bin"). Loads the TypeScript sources through tsx.
//   poolgate neon-proxy --database-url <url> [--port 4444]   local Neon-compatible proxy
//   poolgate start                                           the whole local topology (npm start)
//   poolgate gateway                                         the Node gateway alone (npm run start:node)
import { register } from 'tsx/esm/api';

register();
const [command, ...args] = process.argv.slice(2);
switch (command) {
  case 'neon-proxy': {
    const { runNeonProxyCli } = await import('./neon-proxy/cli.ts');
    process.exitCode = await runNeonProxyCli(args);
    break;
  }
  case 'start':
    await import('./topology.ts').then((m) => m.main());
    break;
  case 'gateway':
    await import('../runtime/node.ts').then((m) => m.main());
    break;
  default:
    console.error(`poolgate: unknown command "${command ?? ''}" (use neon-proxy, start or gateway)`);
    process.exitCode = 1;
}
