/**
 * What a caller's statement may not do, decided once for every path (route handlers' `db`, the
 * guide's API, the edge): end or open a transaction, or carry several statements.
 *
 * Several statements are refused by the server itself: every caller statement goes in the extended
 * protocol, where PostgreSQL refuses several commands in one Parse (42601, raised in
 * exec_parse_message). Transaction control must be refused before it runs (a COMMIT inside our
 * transaction would take effect), so the one look at text is here: the statement's first keyword,
 * after whitespace, comments (nested, as PostgreSQL reads them) and empty statements (`;`).
 * What may change a session beyond the statement is decided here too, from the text
 * (mayChangeSession: such a statement never shares a lane, and its connection is not reused), and
 * afterwards from what the server says, by the connectors: the command tag and the ReadyForQuery
 * status.
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

/** The first `count` words of `text` (upper case; '' past the last), as the server's parser would see them. */
function leadingWords(text: string, count = 2): string[] {
  const words: string[] = [];
  let i = 0;
  while (words.length < count) {
    i = skipNoise(text, i);
    const word = /^[A-Za-z_]+/.exec(text.slice(i))?.[0] ?? '';
    words.push(word.toUpperCase());
    i += word.length;
  }
  return words;
}

/** Answers remembered per text, at most this many: these reads are on every statement's path, and an application's texts repeat. */
const VERDICTS_MAX = 1_000;

function byText<T>(read: (text: string) => T): (text: string) => T {
  const verdicts = new Map<string, T>();
  return (text) => {
    if (verdicts.has(text)) return verdicts.get(text)!;
    if (verdicts.size >= VERDICTS_MAX) verdicts.delete(verdicts.keys().next().value!);
    const verdict = read(text);
    verdicts.set(text, verdict);
    return verdict;
  };
}

const OPENS_OR_ENDS = new Set(['BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT']);

/**
 * The transaction-control statement `text` is (`BEGIN`, `COMMIT`, `START TRANSACTION`,
 * `PREPARE TRANSACTION` …), or undefined. SAVEPOINT, RELEASE and ROLLBACK TO stay inside the
 * transaction and are allowed.
 */
export const transactionControl = byText(readsAsTransactionControl);

function readsAsTransactionControl(text: string): string | undefined {
  const [first, second] = leadingWords(text) as [string, string];
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

/**
 * Statements that change the session by their first keyword (SET LOCAL and SET TRANSACTION too:
 * harmless outside a transaction, but the text alone is not worth parsing further), and DO, whose
 * body may do anything.
 */
const SESSION_COMMANDS = new Set(['SET', 'RESET', 'DISCARD', 'LISTEN', 'UNLISTEN', 'PREPARE', 'DEALLOCATE', 'DECLARE', 'LOAD', 'DO']);

/** Session-level advisory locks and unlocks (pg_advisory_xact_lock and the like end with their transaction and do not match). */
const SESSION_LOCK = /\bpg_(?:try_)?advisory_(?:lock|unlock)(?:_shared|_all)?\b/i;

/**
 * Whether `text` may change its session beyond the statement, so that whoever uses the connection
 * next would see it: such a statement never goes on a shared lane (it takes a pooled session),
 * and the connection it ran on is not reused. The one rule for this, conservative (a false alarm
 * costs one connection):
 * - SET, RESET, DISCARD, LISTEN, PREPARE, DECLARE, DO … and CREATE TEMP …, by the first words;
 * - `set_config(…)` anywhere in the text (also `pg_catalog.set_config`), unless its third argument is
 *   the literal `true` (transaction-local: gone when the statement's or the caller's transaction
 *   ends) — so the RLS pattern `SELECT set_config('app.user', $1, true)` keeps its connection;
 * - session advisory locks and unlocks (a lock left held would be held for the next caller).
 * A word inside a comment or a string counts too. What it cannot see: a function, procedure or
 * trigger that changes the session in its body (plpgsql SET, PERFORM set_config(…, false),
 * EXECUTE, dblink_connect) under a name of its own, and `SELECT … INTO TEMP`. A SET run directly
 * is caught by its command tag afterwards as well (changesSession); the rest is the application's
 * to keep in a transaction (SET LOCAL, set_config(…, true), pg_advisory_xact_lock).
 */
export const mayChangeSession = byText(readsAsSessionChange);

function readsAsSessionChange(text: string): boolean {
  const words = leadingWords(text, 4);
  if (SESSION_COMMANDS.has(words[0]!)) return true;
  if (words[0] === 'CREATE' && words.slice(1).some((w) => w === 'TEMP' || w === 'TEMPORARY')) return true;
  return SESSION_LOCK.test(text) || setsSessionConfig(text);
}

/** A `set_config` call in `text` whose third argument is not the literal `true` (or a mention it cannot read). */
function setsSessionConfig(text: string): boolean {
  for (const m of text.matchAll(/\bset_config\b/gi)) {
    const open = skipNoise(text, m.index + m[0].length);
    if (text[open] !== '(') return true;
    const args = topLevelArguments(text, open + 1);
    if (args?.[2]?.trim().toLowerCase() !== 'true') return true;
  }
  return false;
}

/** The arguments of a call whose `(` is just before `from`, split at top-level commas; undefined when it does not close. */
function topLevelArguments(text: string, from: number): string[] | undefined {
  const args: string[] = [];
  let depth = 0;
  let start = from;
  for (let i = from; i < text.length; i++) {
    const c = text[i]!;
    const quote = c === "'" || c === '"' ? c : c === '$' ? /^\$(?:[A-Za-z_]\w*)?\$/.exec(text.slice(i))?.[0] : undefined;
    if (quote !== undefined) {
      // To the closing quote ('' and "" escapes read as two strings in a row); unclosed: the call does not close.
      const end = text.indexOf(quote, i + quote.length);
      i = end < 0 ? text.length : end + quote.length - 1;
    } else if (c === '(') depth++;
    else if (c === ')' && depth-- === 0) return [...args, text.slice(start, i)];
    else if (c === ',' && depth === 0) {
      args.push(text.slice(start, i));
      start = i + 1;
    }
  }
  return undefined;
}
