import { describe, expect, it } from 'vitest';
import { changesSession, isSeveralStatements, transactionControl } from './statement-kind.js';

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
