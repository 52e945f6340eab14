/** The local Neon-compatible proxy: start it in-process, or run cli.ts. Node-only. */
export { startNeonProxy, type NeonProxy, type NeonProxyOptions, type NeonProxyStats } from './server.js';
export { runNeonProxyCli } from './cli.js';
