/**
 * The one place that knows miniflare's options: how a single-file ESM bundle and its string
 * bindings become a workerd worker, and which compatibility date the edge app runs at. The local
 * topology, the workerd tests and the bench all build their workers here.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { Miniflare } from 'miniflare';

/**
 * The date the edge app is written against; wrangler.toml must say the same (a test checks).
 * workerd 1.20261117 (wrangler 4.164) supports dates up to 2026-11-24.
 */
export const COMPATIBILITY_DATE = '2026-11-17';
export const COMPATIBILITY_FLAGS = ['nodejs_compat'];

type MiniflareOptions = ConstructorParameters<typeof Miniflare>[0];
export type WorkerdWorker = Extract<MiniflareOptions, { workers: unknown }>['workers'][number];

/**
 * @example
 * new Miniflare({ host: '127.0.0.1', port: 8787, workers: [workerdWorker('edge', 'dist/worker/worker.js', env)] });
 */
export function workerdWorker(name: string, bundlePath: string, bindings: Record<string, string>): WorkerdWorker {
  const mainModule = basename(bundlePath);
  return {
    config: {
      name,
      compatibilityDate: COMPATIBILITY_DATE,
      compatibilityFlags: COMPATIBILITY_FLAGS,
      manifest: { mainModule, modules: { [mainModule]: { type: 'esm', contents: readFileSync(bundlePath, 'utf8') } } },
      env: Object.fromEntries(Object.entries(bindings).map(([key, value]) => [key, { type: 'text', value }])),
    },
  };
}
