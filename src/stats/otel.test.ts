import { metrics, propagation, trace } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { MeterProvider } from '@opentelemetry/sdk-metrics';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { afterEach, describe, expect, it } from 'vitest';
import { operationOf, sanitize, sqlState, startDbCall, startForwardSpan, startRequestSpan } from './otel.js';

const NO_HEADERS = { keys: () => [], get: () => undefined };

afterEach(() => {
  trace.disable();
  metrics.disable();
  propagation.disable();
});

describe('without an SDK', () => {
  it('every request gets the one shared non-recording span, and its statements make nothing at all', () => {
    const span = startRequestSpan('GET', {}, NO_HEADERS, { url: 'http://x/a' });
    expect(span.isRecording()).toBe(false);
    expect(startRequestSpan('POST', {}, NO_HEADERS, { url: 'http://x/b' })).toBe(span); // nothing allocated per request
    expect(startDbCall({ span }, 'SELECT 1', 'postgres')).toBeUndefined();
    expect(startDbCall({}, 'SELECT 1', 'postgres')).toBeUndefined();
    const headers = new Headers();
    expect(startForwardSpan(span, 'POST', 'http://node/api', headers)).toBeUndefined();
    expect([...headers.keys()]).toEqual([]);
  });
});

describe('with an SDK', () => {
  it('continues the caller trace from traceparent, and a forward injects its own span as the parent', () => {
    const exporter = new InMemorySpanExporter();
    trace.setGlobalTracerProvider(new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] }));
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    const incoming = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const getter = { keys: () => [], get: (c: Record<string, string>, k: string) => c[k] };
    const span = startRequestSpan('POST', { traceparent: incoming }, getter, { url: 'http://x/api' });
    expect(span.spanContext().traceId).toBe('0af7651916cd43dd8448eb211c80319c');
    const headers = new Headers();
    const forward = startForwardSpan(span, 'POST', 'http://node/api', headers)!;
    expect(headers.get('traceparent')).toBe(`00-0af7651916cd43dd8448eb211c80319c-${forward.spanContext().spanId}-01`);
  });

  it('metrics alone (no tracing) still time each statement', () => {
    metrics.setGlobalMeterProvider(new MeterProvider());
    expect(startDbCall({}, 'SELECT 1', 'postgres')).toBeDefined();
    expect(startDbCall({ internal: true }, 'SELECT 1', 'postgres')).toBeUndefined(); // the process's own work
  });

  it('a database span needs a recording parent', () => {
    trace.setGlobalTracerProvider(new TracerProvider());
    const notRecording = trace.wrapSpanContext({ traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: 0 });
    expect(startDbCall({ span: notRecording }, 'SELECT 1', 'postgres')).toBeUndefined();
  });
});

describe('statement texts', () => {
  it('the operation is the first keyword, after comments', () => {
    expect(operationOf('select 1')).toBe('SELECT');
    expect(operationOf('  -- why\n/* c */ WITH x AS (SELECT 1) SELECT * FROM x')).toBe('WITH');
    expect(operationOf('')).toBe('UNKNOWN');
  });

  it('literals become ?, placeholders stay', () => {
    expect(sanitize(`SELECT * FROM t1 WHERE a = $1 AND b = 'x''y' AND c = 42 AND d = $$lit$$ LIMIT 10`)).toBe(
      `SELECT * FROM t1 WHERE a = $1 AND b = ? AND c = ? AND d = ? LIMIT ?`,
    );
    expect(sanitize(`SELECT E'\\n', "col2" FROM t`)).toBe(`SELECT ?, "col2" FROM t`);
  });

  it('the SQLSTATE is the driver error code, or that of what an error wraps', () => {
    expect(sqlState(Object.assign(new Error('dup'), { code: '23505' }))).toBe('23505');
    expect(sqlState(new Error('cut', { cause: Object.assign(new Error(), { code: '57014' }) }))).toBe('57014');
    expect(sqlState(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }))).toBeUndefined();
  });
});
