/**
 * Points the real `@neondatabase/serverless` driver at a local Neon proxy. The driver reads
 * `fetchEndpoint` only from the global `neonConfig` (1.2.0 ignores the per-call option), so this
 * sets globals: one proxy per test file (vitest runs each file in its own worker).
 * Plain local Postgres needs no TLS and no pipelined startup ("password" pipelining assumes
 * cleartext-password auth; trust and SCRAM break it).
 */
import { neonConfig } from '@neondatabase/serverless';
import { WebSocket } from 'ws';

export interface ProxyAddress {
  host: string;
  port: number;
}

export function useNeonProxy(proxy: ProxyAddress): void {
  const hostPort = `${proxy.host.includes(':') ? `[${proxy.host}]` : proxy.host}:${proxy.port}`;
  neonConfig.fetchEndpoint = () => `http://${hostPort}/sql`;
  neonConfig.wsProxy = (host, port) => `${hostPort}/v2?address=${host}:${port}`;
  neonConfig.useSecureWebSocket = false;
  neonConfig.pipelineConnect = false;
  neonConfig.pipelineTLS = false;
  // Node 20 has no global WebSocket; the driver takes the ws package's constructor.
  neonConfig.webSocketConstructor = WebSocket;
}
