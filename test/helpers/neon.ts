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

/** A StartupMessage (protocol 3.0), as a raw client sends it. */
export function startupMessage(user: string, database: string): Buffer {
  const params = Buffer.from(`user\0${user}\0database\0${database}\0\0`);
  const head = Buffer.alloc(8);
  head.writeInt32BE(8 + params.length, 0);
  head.writeInt32BE(196608, 4);
  return Buffer.concat([head, params]);
}

/** A typed frontend message: its type byte, its length, `body` (e.g. `pgMessage('Q', 'SELECT 1\0')`). */
export function pgMessage(type: string, body: string): Buffer {
  const bytes = Buffer.from(body);
  const head = Buffer.alloc(5);
  head.write(type, 0);
  head.writeInt32BE(4 + bytes.length, 1);
  return Buffer.concat([head, bytes]);
}

/** A raw WebSocket to the proxy's `/v2` for `address` (host:port), open, keeping every message it receives. */
export async function openRawSocket(proxy: ProxyAddress, address: string): Promise<{ ws: WebSocket; received: Buffer[] }> {
  const ws = new WebSocket(`ws://${proxy.host}:${proxy.port}/v2?address=${address}`);
  ws.binaryType = 'nodebuffer';
  const received: Buffer[] = [];
  ws.on('message', (data: Buffer) => received.push(data));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  return { ws, received };
}

/** The HTTP status a WebSocket upgrade to the proxy gets when it is refused; rejects if the socket opens. */
export function refusedUpgradeStatus(proxy: ProxyAddress, address: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const ws = new WebSocket(`ws://${proxy.host}:${proxy.port}/v2?address=${address}`);
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    ws.on('open', () => reject(new Error('the WebSocket opened')));
    ws.on('error', () => {});
  });
}
