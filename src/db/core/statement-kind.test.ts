import { describe, expect, it } from 'vitest';
import { changesSession, isSeveralStatements, mayChangeSession, transactionControl } from './statement-kind.js';

describe('transactionControl: the statement a text opens or ends a transaction with, as the server would read it', () => {
  it.each([
    ['BEGIN', 'BEGIN'],
    ['begin isolation level serializable', 'BEGIN'],
    ['; BEGIN ISOLATION LEVEL REPEATABLE READ', 'BEGIN'],
    ['  -- tidy up\nROLLBACK', 'ROLLBACK'],
    [' /* end early */ commit', 'COMMIT'],
    ['/* a /* nested */ comment */ END', 'END'],
    ['/* unclosed /* */ COMMIT */ SELECT 1', undefined], // all one comment to the server, then SELECT
    ['START TRANSACTION READ ONLY', 'START TRANSACTION'],
    ["PREPARE TRANSACTION 'x'", 'PREPARE TRANSACTION'],
    ["COMMIT PREPARED 'x'", 'COMMIT PREPARED'],
    ['abort', 'ABORT'],
    ['ROLLBACK TO SAVEPOINT a', undefined],
    ['rollback to a', undefined],
    ['SAVEPOINT a', undefined],
    ['RELEASE SAVEPOINT a', undefined],
    ['PREPARE q AS SELECT 1', undefined],
    ['SELECT 1; COMMIT', undefined], // several statements: the server refuses them (extended protocol)
    ['SELECT begin FROM t', undefined],
    ['', undefined],
  ])('%j → %s', (text, expected) => {
    expect(transactionControl(text)).toBe(expected);
  });
});

describe('what the server says', () => {
  it('several commands in one Parse: 42601 from exec_parse_message only', () => {
    expect(isSeveralStatements({ code: '42601', routine: 'exec_parse_message' })).toBe(true);
    expect(isSeveralStatements({ code: '42601', routine: 'scanner_yyerror' })).toBe(false);
  });
  it('a command tag that changed the session', () => {
    expect(['SET', 'RESET', 'DISCARD', 'LISTEN', 'DEALLOCATE'].every(changesSession)).toBe(true);
    expect(['SELECT', 'INSERT', 'BEGIN', 'COMMIT', undefined].some(changesSession)).toBe(false);
  });
});

describe('mayChangeSession: text that may change its session beyond the statement (conservative)', () => {
  it.each([
    ["SET statement_timeout = '1s'", true],
    ['  -- first\n set search_path = x', true],
    ['SET LOCAL statement_timeout = 1', true],
    ['RESET ALL', true],
    ['DISCARD ALL', true],
    ['LISTEN jobs', true],
    ['DEALLOCATE ALL', true],
    ['DECLARE c CURSOR WITH HOLD FOR SELECT 1', true],
    ['DO $$ BEGIN PERFORM 1; END $$', true],
    ['CREATE TEMP TABLE t (a int)', true],
    ['create or replace temporary view v as select 1', true],
    ["SELECT set_config('app.x', 'y', false)", true],
    ["SELECT pg_catalog.set_config('app.x', 'y', false)", true],
    ['SELECT set_config($1, $2, $3)', true],
    ["SELECT set_config('app.x', 'y', true::boolean)", true], // not the literal: counted as session-level
    ["SELECT set_config('app.x', 'a,b', true), set_config('app.y', 'z', false)", true],
    ["SELECT set_config('app.x', $$,true,$$, false)", true],
    ['SELECT set_config', true],
    ["SELECT set_config('app.x', 'unclosed, true", true],
    ['SELECT pg_advisory_lock(1)', true],
    ['SELECT pg_try_advisory_lock_shared($1)', true],
    ['SELECT pg_advisory_unlock_all()', true],
    ["SELECT set_config('app.x', 'y', true)", false],
    ["SELECT set_config('app.x', concat('a', ')', 'b'), TRUE)", false],
    ['SELECT set_config($1, $2, true)', false],
    ['SELECT pg_advisory_xact_lock(1)', false],
    ['SELECT pg_try_advisory_xact_lock(hashtextextended($1, 7)) AS ok', false],
    ['SELECT * FROM users WHERE id = $1', false],
    ['CREATE TABLE t (a int)', false],
    ['UPDATE settings SET v = 1', false],
    ['', false],
  ])('%j → %s', (text, expected) => {
    expect(mayChangeSession(text)).toBe(expected);
  });
});
