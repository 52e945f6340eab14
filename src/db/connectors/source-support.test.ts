/**
 * SourceSupport's rules with a fake pg Client (PgBouncer itself: test/node/poolers.test.ts and the
 * contract suite's PgBouncer backends): what counts as a refusal, that each is said once, and that
 * statement_timeout is dropped only when a connect without it works.
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { SourceSupport } from './source-support.js';

const pgError = (code: string) => Object.assign(new Error('refused'), { code });

/** A Client whose connect succeeds unless its config asks for statement_timeout and `refuses` says so; records each config. */
function fakeClient(refuses: (config: pg.ClientConfig) => boolean) {
  const configs: pg.ClientConfig[] = [];
  class Client {
    constructor(readonly config: pg.ClientConfig) {
      configs.push(config);
    }
    on() {}
    connect() {
      return refuses(this.config) ? Promise.reject(pgError('08P01')) : Promise.resolve();
    }
    end() {
      return Promise.resolve();
    }
  }
  return { Client: Client as unknown as new (config: pg.ClientConfig) => pg.Client, configs };
}

const config = { connectionString: 'postgres://u@127.0.0.1:1/db', statement_timeout: 5_000 };

describe('SourceSupport', () => {
  it('a named statement refused (26000 or 42P05) turns names off for the source, said in one line', () => {
    const logs: string[] = [];
    const support = new SourceSupport((line) => logs.push(line));
    expect(support.namedStatementRefused(pgError('0A000'))).toBe(false);
    expect(support.namedStatements).toBe(true);
    expect(support.namedStatementRefused(pgError('42P05'))).toBe(true);
    expect(support.namedStatementRefused(pgError('26000'))).toBe(true);
    expect(support.namedStatements).toBe(false);
    expect(support.refused()).toEqual({ namedStatements: '42P05' });
    expect(logs).toHaveLength(1);
    expect(logs[0]).toMatch(/refused named prepared statements \(42P05: .*\); statements run unnamed/);
  });

  it('08P01 at connect: statement_timeout is dropped when a connect without it works, once for all', async () => {
    const logs: string[] = [];
    const support = new SourceSupport((line) => logs.push(line));
    const { Client, configs } = fakeClient((c) => c.statement_timeout !== undefined);
    const [a, b] = await Promise.all([
      support.startupRefused(pgError('08P01'), Client, config),
      support.startupRefused(pgError('08P01'), Client, config),
    ]);
    expect([a, b]).toEqual([true, true]);
    expect(configs).toHaveLength(1); // one probe for both
    expect(configs[0]).not.toHaveProperty('statement_timeout');
    expect(support.clientConfig(config)).toEqual({ connectionString: config.connectionString });
    expect(support.refused()).toEqual({ statementTimeoutAtStartup: '08P01' });
    expect(logs).toEqual([
      expect.stringMatching(/refused statement_timeout as a startup parameter \(08P01: .*\); connections open without it/),
    ]);
  });

  it('keeps statement_timeout when the connect without it fails too, or the error is another one', async () => {
    const support = new SourceSupport();
    const { Client, configs } = fakeClient(() => true);
    expect(await support.startupRefused(pgError('08P01'), Client, config)).toBe(false);
    expect(await support.startupRefused(pgError('28P01'), Client, config)).toBe(false);
    expect(await support.startupRefused(pgError('08P01'), Client, { connectionString: config.connectionString })).toBe(false);
    expect(configs).toHaveLength(1); // only the first was worth a probe
    expect(support.clientConfig(config)).toBe(config);
    expect(support.refused()).toEqual({});
  });
});
