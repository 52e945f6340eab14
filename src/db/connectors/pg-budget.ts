/**
 * One connection budget for every poolgate instance on one PostgreSQL server (POOL_BUDGET,
 * POOL_RESERVE). Each instance marks its connections' application_name with an instance id
 * (`<name> [pg:1a2b3c4d]`) and looks at pg_stat_activity every POOL_BUDGET_INTERVAL_MS while it
 * holds connections: the server's limit (max_connections less superuser_reserved_connections, or
 * POOL_BUDGET when a number) less the reserve less everyone else's backends is split evenly
 * between the live instances; an instance grows only into what is free at that moment, so a
 * newcomer waits for its peers to shrink instead of pushing the server over its limit.
 *
 * Why pg_stat_activity and no lease: the server's list of backends is the truth about who holds
 * slots, so there is nothing to expire and no clock to trust (intervals are read on the monotonic
 * clock). A process killed without closing: its kernel closes the sockets and the backends end at
 * once. A host lost or partitioned: its backends stay until the server's TCP keepalive ends them,
 * and are counted meanwhile (its peers hold less, never more); it keeps its last share. A connect refused with
 * 53300 anyway (peers started together and saw each other late) shrinks the share to what the
 * instance holds, and the connect waits for one of those instead (pg-pool.ts).
 */
import type { Log } from '../../log/logger.js';
import { now } from '../../stats/clock.js';
import type { BudgetFigures } from '../types.js';

/** What one look at pg_stat_activity saw. */
export interface ServerView {
  maxConnections: number;
  /** Slots an ordinary client cannot take: superuser_reserved_connections, plus reserved_connections (PostgreSQL 16+). */
  superuserReserved: number;
  /** Client backends on the whole server (every database, every user), ours included. */
  clients: number;
  /** Client backends of each poolgate instance, by instance id (ours among them once it has one). */
  instances: Record<string, number>;
}

export interface BudgetRules {
  instanceId: string;
  /** Connections no instance takes: room for an operator's psql and for migrations. */
  reserve: number;
  /** The share is never above this (POOL_MAX). */
  poolMax: number;
  /** A fixed total for every instance (POOL_BUDGET=<n>) instead of the server's limit. */
  total?: number;
}

/**
 * The share rule, written once: an even split of what is left after the reserve and everyone
 * else's backends (or of POOL_BUDGET=<n>), but no more than this instance holds plus what is free
 * right now; at least 1, at most POOL_MAX.
 * @example shareOf({ maxConnections: 40, superuserReserved: 3, clients: 10, instances: { a: 2, b: 2 } }, { instanceId: 'a', reserve: 3, poolMax: 20 })
 */
export function shareOf(
  view: ServerView,
  rules: BudgetRules,
): { share: number; limit: number; available: number; instances: number; others: number } {
  const limit = rules.total ?? view.maxConnections - view.superuserReserved;
  const ours = Object.values(view.instances).reduce((n, c) => n + c, 0);
  const others = Math.max(0, view.clients - ours);
  const instances = Object.keys(view.instances).length + (rules.instanceId in view.instances ? 0 : 1);
  // POOL_BUDGET=<n> is poolgate's own total: the reserve and others' backends are the server's business then.
  const available = rules.total ?? limit - rules.reserve - others;
  const fair = Math.floor(available / instances);
  const mine = view.instances[rules.instanceId] ?? 0;
  const free = Math.max(0, available - ours);
  const share = Math.max(1, Math.min(rules.poolMax, fair, mine + free));
  return { share, limit, available, instances, others };
}

/** 53300 too_many_connections: the server (or the role, or the database) has no slot for one more. */
export const isTooMany = (err: unknown): boolean => (err as { code?: unknown } | undefined)?.code === '53300';

/** After the n-th refusal in a row with no connection of our own to wait for: 25 ms doubling up to 400, jittered in its upper half. */
export function refusedPauseMs(refused: number, random: () => number = Math.random): number {
  const ceiling = Math.min(400, 25 * 2 ** refused);
  return ceiling / 2 + (random() * ceiling) / 2;
}

/** Eight hex digits, new each process (Web Crypto: no Node import). */
export const newInstanceId = (): string =>
  Array.from(crypto.getRandomValues(new Uint8Array(4)), (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * A look that failed because the server cannot answer it (no pg_stat_activity, no permission):
 * no budget then, as before. Connection failures and a full server (classes 08, 53, 57) are not that.
 */
const cannotLook = (err: unknown): boolean => {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && code.length === 5 && !/^(08|53|57)/.test(code);
};

const ID_PATTERN = / \[pg:([0-9a-f]{8})\]$/;

/** The application_name that carries the instance id (the name cut to fit PostgreSQL's 63 bytes). */
export function markedApplicationName(name: string, instanceId: string): string {
  const mark = ` [pg:${instanceId}]`;
  return name.slice(0, 63 - mark.length) + mark;
}

/** One round trip: the server's limits, every client backend, and poolgate's by instance id. */
export const SERVER_VIEW_SQL = `WITH a AS (
  SELECT substring(application_name from '${ID_PATTERN.source}') AS id
  FROM pg_stat_activity WHERE backend_type = 'client backend')
SELECT current_setting('max_connections')::int AS max_connections,
  current_setting('superuser_reserved_connections')::int
    + coalesce(current_setting('reserved_connections', true)::int, 0) AS superuser_reserved,
  (SELECT count(*)::int FROM a) AS clients,
  (SELECT coalesce(json_object_agg(id, n), '{}'::json) FROM (SELECT id, count(*)::int AS n FROM a WHERE id IS NOT NULL GROUP BY id) g) AS instances`;

export interface ConnectionBudgetOptions extends BudgetRules {
  intervalMs: number;
  /** Runs SERVER_VIEW_SQL (on one of the pool's connections). */
  sample: () => Promise<ServerView>;
  /**
   * Whether a periodic look can be had now without a connection of its own: one idle, or a lane to
   * write it on. Holding nothing, nothing is looked at (no connection kept open for it); all busy,
   * the look waits for the next tick rather than for a connection.
   */
  canLook: () => boolean;
  /** Called whenever the share changes. */
  onShare: (share: number) => void;
  log?: Log;
}

export class ConnectionBudget {
  readonly #o: ConnectionBudgetOptions;
  #share: number;
  #view: { limit: number; instances: number; others: number };
  #sampledAt = -Infinity;
  #sampling: Promise<void> | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  #sampledCount = 0;
  #sampleErrorCount = 0;
  #refusedCount = 0;
  #loggedError = false;
  #loggedBlind = false;

  constructor(options: ConnectionBudgetOptions) {
    this.#o = options;
    // Until the first look: one connection (the one that looks).
    this.#share = 1;
    this.#view = { limit: options.total ?? 0, instances: 1, others: 0 };
  }

  get share(): number {
    return this.#share;
  }

  /** Starts the periodic look (unref'd: it never holds the process open). */
  start(): void {
    this.#timer ??= setInterval(() => {
      if (this.#o.canLook()) void this.refresh();
    }, this.#o.intervalMs);
    (this.#timer as { unref?: () => void }).unref?.();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** A fresh enough share: looks first when the last look is older than two intervals (idle, or never). */
  fresh(): Promise<void> {
    return now() - this.#sampledAt > 2 * this.#o.intervalMs ? this.refresh() : Promise.resolve();
  }

  /** One look at the server at a time; a failed one keeps the last share (a partition: what it had). */
  refresh(): Promise<void> {
    this.#sampling ??= this.#o
      .sample()
      .then(
        (view) => this.#apply(view),
        (err: unknown) => {
          this.#sampleErrorCount++;
          if (!this.#loggedError)
            this.#o.log?.(
              `poolgate: the connection budget could not read pg_stat_activity (${String(err)}); keeping share ${this.#share}`,
              { event: 'budget.unreadable' },
              'warn',
            );
          this.#loggedError = true;
          if (this.#sampledCount === 0 && cannotLook(err)) this.#set(this.#o.poolMax); // no budget, as before
        },
      )
      .finally(() => {
        this.#sampledAt = now();
        this.#sampling = undefined;
      });
    return this.#sampling;
  }

  /** The server refused a connect (53300): this instance holds all it can have for now; look again soon. */
  refused(held: number): void {
    this.#refusedCount++;
    this.#set(Math.max(1, Math.min(this.#share, held)));
    this.#sampledAt = -Infinity;
  }

  figures(): BudgetFigures {
    return {
      share: this.#share,
      ...this.#view,
      reserve: this.#o.reserve,
      sampledCount: this.#sampledCount,
      sampleErrorCount: this.#sampleErrorCount,
      refusedCount: this.#refusedCount,
    };
  }

  #apply(view: ServerView): void {
    this.#sampledCount++;
    // The look ran on one of our connections, so it must see at least that one. It does not when
    // something in between (a pooler) opens the server's connections under another name: what it
    // counts is then not ours to split, so no budget (as POOL_BUDGET=off), said once.
    if (!(this.#o.instanceId in view.instances)) {
      if (!this.#loggedBlind)
        this.#o.log?.(
          'poolgate: the connection budget does not see this instance in pg_stat_activity (a pooler in between?); no budget',
          { event: 'budget.off' },
          'warn',
        );
      this.#loggedBlind = true;
      this.#view = { ...this.#view, instances: 0 };
      this.#set(this.#o.poolMax);
      return;
    }
    const { share, ...rest } = shareOf(view, this.#o);
    this.#view = rest;
    this.#set(share);
  }

  #set(share: number): void {
    if (share === this.#share) return;
    this.#share = share;
    this.#o.onShare(share);
  }
}

/**
 * The pool's size inside the share: the lanes open now come out of it, and one more while a lane
 * waits for room (the pool then gives back a connection at its next release); at least 1.
 */
export function poolMaxFor(share: number, liveLanes: number, laneWanted: boolean): number {
  return Math.max(1, share - liveLanes - (laneWanted ? 1 : 0));
}

/** A lane may open only into room the pool leaves inside the share. */
export function laneFits(share: number, poolTotal: number, liveLanes: number): boolean {
  return poolTotal + liveLanes < share;
}

/** A server view from SERVER_VIEW_SQL's row. */
export function toServerView(row: Record<string, unknown>): ServerView {
  return {
    maxConnections: Number(row.max_connections),
    superuserReserved: Number(row.superuser_reserved),
    clients: Number(row.clients),
    instances: (typeof row.instances === 'string' ? JSON.parse(row.instances) : row.instances) as Record<string, number>,
  };
}
