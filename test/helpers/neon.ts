/**
 * Points a real `@neondatabase/serverless` driver at a local Neon proxy, the way the app does it
 * (useLocalNeonProxy), plus the `ws` WebSocket constructor. The driver reads `fetchEndpoint` only
 * from its module's `neonConfig` (1.2.0 ignores the per-call option), so this sets that module's
 * globals: one proxy per test file (vitest runs each file in its own worker). Each driver version
 * has its own `neonConfig`; pass it to point another one.
 */
import { neonConfig } from '@neondatabase/serverless';
import type pg from 'pg';
import { WebSocket } from 'ws';
import { useLocalNeonProxy, type NeonProxySettings } from '../../src/db/connectors/neon.js';

export interface ProxyAddress {
  host: string;
  port: number;
}

export function useNeonProxy(proxy: ProxyAddress, config: NeonProxySettings & { webSocketConstructor: unknown } = neonConfig): void {
  const host = proxy.host.includes(':') ? `[${proxy.host}]` : proxy.host;
  useLocalNeonProxy(config, `http://${host}:${proxy.port}`);
  config.webSocketConstructor = WebSocket;
}

/** Field metadata as pg and the Neon drivers expose it, for comparing their results. */
export const fieldShape = (f: pg.FieldDef) => ({
  name: f.name,
  dataTypeID: f.dataTypeID,
  tableID: f.tableID,
  columnID: f.columnID,
  dataTypeSize: f.dataTypeSize,
  dataTypeModifier: f.dataTypeModifier,
});
