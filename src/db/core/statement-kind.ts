/**
 * What a caller's statement may not do, decided once for every path (route handlers' `db`, the
 * guide's API, the edge): end or open a transaction, or carry several statements.
 *
 * Several statements are refused by the server itself: every caller statement goes in the extended
 * protocol, where PostgreSQL refuses several commands in one Parse (42601, raised in
 * exec_parse_message). Transaction control must be refused before it runs (a COMMIT inside our
 * transaction would take effect), so the one look at text is here: the statement's first keyword,
 * after whitespace, comments (nested, as PostgreSQL reads them) and empty statements (`;`).
 * Whatever still changes a session (SET, a transaction left open) is caught from what the server
 * says, by the connectors: the command tag and the ReadyForQuery status.
 */
import { AppError } from '../../errors.js';

/** Skips whitespace, `;`, `-- …` and nested block comments from `i`; returns where the first token starts. */
function skipNoise(text: string, i: number): number {
  for (;;) {
    const c = text[i];
    if (c === undefined) return i;
    if (c === ';' || /\s/.test(c)) i++;
    else if (c === '-' && text[i + 1] === '-') {
      const end = text.indexOf('\n', i);
      i = end < 0 ? text.length : end + 1;
    } else if (c === '/' && text[i + 1] === '*') i = afterBlockComment(text, i);
    else return i;
  }
}

function afterBlockComment(text: string, i: number): number {
  let depth = 0;
  while (i < text.length) {
    if (text.startsWith('/*', i)) {
      depth++;
      i += 2;
    } else if (text.startsWith('*/', i)) {
      i += 2;
      if (--depth === 0) return i;
    } else i++;
  }
  return i;
}

/** The first two words of `text` (upper case), as the server's parser would see them. */
function leadingWords(text: string): [string, string] {
  const first = /^[A-Za-z_]+/.exec(text.slice(skipNoise(text, 0)))?.[0] ?? '';
  const rest = skipNoise(text, skipNoise(text, 0) + first.length);
  const second = /^[A-Za-z_]+/.exec(text.slice(rest))?.[0] ?? '';
  return [first.toUpperCase(), second.toUpperCase()];
}

const OPENS_OR_ENDS = new Set(['BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT']);

/**
 * The transaction-control statement `text` is (`BEGIN`, `COMMIT`, `START TRANSACTION`,
 * `PREPARE TRANSACTION` …), or undefined. SAVEPOINT, RELEASE and ROLLBACK TO stay inside the
 * transaction and are allowed.
 */
export function transactionControl(text: string): string | undefined {
  const [first, second] = leadingWords(text);
  if (first === 'ROLLBACK' && second === 'TO') return undefined;
  if (first === 'START' || first === 'PREPARE') return second === 'TRANSACTION' ? `${first} TRANSACTION` : undefined;
  if ((first === 'COMMIT' || first === 'ROLLBACK') && second === 'PREPARED') return `${first} PREPARED`;
  return OPENS_OR_ENDS.has(first) ? first : undefined;
}

/** The one error for a statement poolgate refuses: what it is, and what to use instead. */
export function statementRefused(what: string, inTransaction: boolean): AppError {
  const message = inTransaction
    ? `"${what}" refused: db.transaction() and executeTransaction run BEGIN and COMMIT themselves, and ROLLBACK on any error: ` +
      `remove "${what}" from the callback (ending the transaction early would leave the rest outside it).`
    : `"${what}" refused: it would leave a pooled connection inside a transaction: use db.transaction(fn) ` +
      '(executeTransaction(fn) in the client API), which runs BEGIN … COMMIT on one connection.';
  return new AppError(500, 'statement_refused', message);
}

/** Throws statementRefused when `text` opens or ends a transaction. */
export function refuseTransactionControl(text: string, inTransaction: boolean): void {
  const what = transactionControl(text);
  if (what !== undefined) throw statementRefused(what, inTransaction);
}

/** The server refused several commands in one statement (extended protocol: 42601 from exec_parse_message). */
export function isSeveralStatements(err: unknown): boolean {
  const e = err as { code?: unknown; routine?: unknown } | undefined;
  return e?.code === '42601' && e.routine === 'exec_parse_message';
}

/** `err`, or the one refusal when it is the server refusing several statements in one. */
export function asRefused(err: unknown): unknown {
  if (!isSeveralStatements(err)) return err;
  return new AppError(
    500,
    'statement_refused',
    'Several statements in one text refused: send one statement per query (db.readBatch or db.transaction(fn) for several).',
    { cause: err },
  );
}

/**
 * Command tags (their first word, as pg reports them) of statements that change the session beyond
 * the statement (SET LOCAL included: the tag does not tell them apart): such a connection is not reused.
 */
const SESSION_TAGS = new Set(['SET', 'RESET', 'DISCARD', 'LISTEN', 'UNLISTEN', 'PREPARE', 'DEALLOCATE', 'DECLARE', 'LOAD']);

/** True when the server's command tag says the statement changed the session (SET, RESET, LISTEN …). */
export const changesSession = (command: string | undefined): boolean => command !== undefined && SESSION_TAGS.has(command);
