/**
 * OpenTelemetry through the api, with an SDK registered the way a user would (a tracer provider
 * with an in-memory exporter, a meter provider with a reader, the W3C propagator):
 * - the Node gateway: a read is a SERVER span named by its route pattern with child database
 *   spans carrying the database semantic conventions (no parameter values); a failed statement
 *   carries its SQLSTATE; the database client metrics are reported;
 * - a forwarded write: the edge app (createEdgeApp on the real Neon driver, through the local Neon
 *   proxy) and the Node gateway it forwards to, in this one process sharing one provider, file
 *   their spans under ONE trace id, the Node side's SERVER span a child of the edge's forward span.
 *   Both sides run here because workerd's isolate cannot share an in-memory exporter with the test
 *   (an SDK there would have to export over the network); what crosses between them is the real
 *   HTTP forward and its `traceparent` header, the same bytes the worker sends.
 */
import * as Neon from '@neondatabase/serverless';
import { metrics, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  AggregationTemporality,
  MeterProvider,
  MetricReader,
  type DataPoint,
  type MetricData,
  type ResourceMetrics,
} from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseEdgeConfig } from '../../src/config.js';
import { createEdgeApp } from '../../src/edge-app.js';
import { fitness } from '../../src/fitness/app.js';
import { startNeonProxy, type NeonProxy } from '../../src/local/neon-proxy/index.js';
import type { FetchApp } from '../../src/definition.js';
import { json, startTestGateway, type TestGateway } from '../helpers/gateway.js';
import { useNeonProxy } from '../helpers/neon.js';

class TestReader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE });
  }
  protected onShutdown = async () => {};
  protected onForceFlush = async () => {};
}

const exporter = new InMemorySpanExporter();
const tracerProvider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });
const reader = new TestReader();
const meterProvider = new MeterProvider({ readers: [reader] });

/** The Node gateway the edge forwards to (signed forwards only), and one on the same database taking plain requests. */
let t: TestGateway;
let direct: TestGateway;
let proxy: NeonProxy;
let edge: FetchApp;
const forwardSecret = randomBytes(32).toString('base64url');

beforeAll(async () => {
  trace.setGlobalTracerProvider(tracerProvider);
  metrics.setGlobalMeterProvider(meterProvider);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  direct = await startTestGateway();
  t = await startTestGateway({ FORWARD_SECRET: forwardSecret }, { db: direct.db });
  proxy = await startNeonProxy({ databaseUrls: [t.db.url], port: 0, host: '127.0.0.1', log: () => {} });
  useNeonProxy(proxy);
  edge = createEdgeApp(
    parseEdgeConfig({
      DATABASE_URL: t.db.url,
      NEON_PROXY_URL: proxy.url,
      NODE_FUNCTION_URL: t.url,
      FORWARD_SECRET: forwardSecret,
      OPS_TOKEN: 'edge-ops-token-0123456789-abcdef',
      CACHE: 'off',
    }),
    { app: fitness, driver: Neon, scope: 'test edge', log: () => {} },
  );
});

afterAll(async () => {
  await proxy?.close();
  await t?.stop();
  await direct?.stop();
  trace.disable();
  metrics.disable();
  propagation.disable();
  await tracerProvider.shutdown();
  await meterProvider.shutdown();
});

beforeEach(() => exporter.reset());

const spans = () => exporter.getFinishedSpans();
const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;
const childrenOf = (parent: ReadableSpan) => spans().filter((s) => parentOf(s) === parent.spanContext().spanId);
const serverSpans = (name: string) => spans().filter((s) => s.kind === SpanKind.SERVER && s.name === name);

/** A user created on the plain gateway. */
const createUser = (email: string) => json<{ id: string }>(`${direct.url}/api/users`, { method: 'POST', json: { email, name: 'Traced' } });

/** A user created through the edge (its gateway takes signed forwards only). */
async function createUserAtEdge(email: string): Promise<{ status: number; body: { id: string } }> {
  const res = await edge.fetch(
    new Request('http://edge.test/api/users', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email, name: 'Traced' }),
    }),
  );
  return { status: res.status, body: (await res.json()) as { id: string } };
}

describe('the Node gateway', () => {
  it('a read is a SERVER span named by its route, its statements child CLIENT spans with the database conventions', async () => {
    const created = await createUser(`otel-${randomUUID()}@example.com`);
    expect(created.status).toBe(201);
    exporter.reset();

    const id = created.body.id;
    expect((await json(`${direct.url}/api/users/${id}`)).status).toBe(200);

    const [server, ...others] = serverSpans('GET /api/users/:id');
    expect(others).toEqual([]);
    expect(server!.attributes).toMatchObject({
      'http.request.method': 'GET',
      'http.route': '/api/users/:id',
      'http.response.status_code': 200,
      'url.path': `/api/users/${id}`,
      'url.scheme': 'http',
    });
    expect(parentOf(server!)).toBeUndefined(); // nobody sent a traceparent: a root
    const db = childrenOf(server!);
    expect(db.length).toBeGreaterThan(0);
    for (const span of db) {
      expect(span.kind).toBe(SpanKind.CLIENT);
      expect(span.spanContext().traceId).toBe(server!.spanContext().traceId);
      expect(span.attributes).toMatchObject({ 'db.system.name': 'postgresql', 'db.operation.name': span.name });
      expect(span.attributes['db.query.text']).not.toContain(id); // values travel in params, never recorded
    }
    expect(db.map((s) => s.name)).toContain('SELECT');
    expect(db.find((s) => s.name === 'SELECT')!.attributes['db.query.text']).toMatch(/\$1/);
  });

  it('a statement the server refuses carries its SQLSTATE (db.response.status_code) and an error status; a 4xx is no server error', async () => {
    const email = `otel-dup-${randomUUID()}@example.com`;
    expect((await createUser(email)).status).toBe(201);
    exporter.reset();
    expect((await createUser(email)).status).toBe(409);

    const [server] = serverSpans('POST /api/users');
    expect(server!.attributes['http.response.status_code']).toBe(409);
    expect(server!.status.code).not.toBe(SpanStatusCode.ERROR);
    const failed = childrenOf(server!).filter((s) => s.status.code === SpanStatusCode.ERROR);
    expect(failed.map((s) => [s.name, s.attributes['db.response.status_code'], s.attributes['error.type']])).toEqual([
      ['INSERT', '23505', '23505'],
    ]);
  });

  it('reports the database client metrics: operation durations (with SQLSTATE on errors), connections by state, waits and use', async () => {
    const { resourceMetrics, errors } = await reader.collect();
    expect(errors).toEqual([]);
    const found = byName(resourceMetrics);
    const durations = found.get('db.client.operation.duration');
    expect(durations?.descriptor.unit).toBe('s');
    const points = durations!.dataPoints as DataPoint<{ count: number }>[];
    expect(
      points.find((p) => p.attributes['db.operation.name'] === 'SELECT' && p.attributes['error.type'] === undefined)?.value.count,
    ).toBeGreaterThan(0);
    expect(points.find((p) => p.attributes['db.response.status_code'] === '23505')?.value.count).toBeGreaterThan(0);

    const count = found.get('db.client.connection.count')!.dataPoints as DataPoint<number>[];
    const states = count.filter((p) => p.attributes['db.client.connection.pool.name'] === 'postgres');
    expect(states.map((p) => p.attributes['db.client.connection.state']).sort()).toEqual(['idle', 'used']);
    expect(states.reduce((sum, p) => sum + p.value, 0)).toBeGreaterThan(0); // POOL_MIN=1: at least one open
    expect(found.get('db.client.connection.pending_requests')!.dataPoints.length).toBeGreaterThan(0);
    expect(found.get('db.client.connection.wait_time')!.dataPoints.length).toBeGreaterThan(0);
    expect(found.get('db.client.connection.use_time')!.dataPoints.length).toBeGreaterThan(0);
  });
});

describe('a write at the edge, forwarded to the Node function', () => {
  it("puts both sides' spans in ONE trace: edge SERVER → forward CLIENT → Node SERVER → database spans", async () => {
    expect((await createUserAtEdge(`otel-edge-${randomUUID()}@example.com`)).status).toBe(201);

    const [edgeServer, nodeServer, ...more] = serverSpans('POST /api/users').sort((a, b) => (parentOf(a) ? 1 : 0) - (parentOf(b) ? 1 : 0));
    expect(more).toEqual([]);
    const traceId = edgeServer!.spanContext().traceId;
    expect(parentOf(edgeServer!)).toBeUndefined();
    const [forward] = childrenOf(edgeServer!);
    expect(forward).toMatchObject({ name: 'POST', kind: SpanKind.CLIENT });
    expect(forward!.attributes).toMatchObject({
      'http.request.method': 'POST',
      'http.response.status_code': 201,
      'url.full': `${t.url}/api/users`,
    });

    expect(nodeServer!.spanContext().traceId).toBe(traceId);
    expect(parentOf(nodeServer!)).toBe(forward!.spanContext().spanId);
    const db = childrenOf(nodeServer!);
    expect(db.map((s) => s.name)).toEqual(expect.arrayContaining(['BEGIN', 'INSERT', 'COMMIT']));
    expect(new Set(spans().map((s) => s.spanContext().traceId))).toEqual(new Set([traceId]));
  });

  it('an edge read is a SERVER span with its Neon statements as child database spans', async () => {
    const created = await createUser(`otel-read-${randomUUID()}@example.com`);
    exporter.reset();
    const res = await edge.fetch(new Request(`http://edge.test/api/users/${created.body.id}`));
    expect(res.status).toBe(200);
    const [server] = serverSpans('GET /api/users/:id');
    const db = childrenOf(server!);
    expect(db.map((s) => s.attributes['db.client.connection.pool.name'])).toContain('neon-http');
    expect(db.every((s) => s.attributes['db.system.name'] === 'postgresql')).toBe(true);
  });
});

function byName(resourceMetrics: ResourceMetrics): Map<string, MetricData> {
  const found = new Map<string, MetricData>();
  for (const scope of resourceMetrics.scopeMetrics) for (const m of scope.metrics) found.set(m.descriptor.name, m);
  return found;
}
