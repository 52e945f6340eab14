/**
 * Read replicas at the edge (issue 22) under real Deno: the Netlify Edge bundle reads through the
 * local Neon proxy from a private primary and its two streaming standbys (test/helpers/edge-replicas.ts);
 * writes are forwarded, signed, to a real Node gateway that has the replicas too and
 * CONSISTENCY_COOKIE=on. With replication lag made on purpose, a read carrying its write's token —
 * as the header, or only as the cookie the write set, both passed back by the edge — sees that
 * write every time.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONSISTENCY_COOKIE } from '../../src/db/consistency.js';
import { startDenoEdge, type DenoEdge } from '../helpers/deno.js';
import {
  ask,
  CONSISTENCY_HEADER,
  createUser,
  lookAgain,
  onReplicas,
  servedBy,
  sleep,
  startReplicatedEdgeStack,
  tally,
  type ReplicatedEdgeStack,
} from '../helpers/edge-replicas.js';
import { privatePostgresAvailable } from '../helpers/private-postgres.js';

const APPLY_DELAY_MS = 700;
const PAIRS = 10;

describe.skipIf(!privatePostgresAvailable)('read replicas at the edge, under Deno (a private primary and two streaming standbys)', () => {
  let stack: ReplicatedEdgeStack;
  let deno: DenoEdge | undefined;
  let edge: string;

  beforeAll(async () => {
    stack = await startReplicatedEdgeStack('netlify-edge', { CONSISTENCY_COOKIE: 'on' });
    deno = await startDenoEdge(stack.bundlePath, stack.edgeEnv);
    edge = deno.url;
  }, 120_000);

  afterAll(async () => {
    await deno?.stop();
    await stack?.stop();
  });

  /** `PAIRS` writes through the edge on lagging standbys, each read back at once with `carry(write)` and without; then again later. */
  async function readYourWrites(label: string, carry: (write: Awaited<ReturnType<typeof createUser>>['res']) => Record<string, string>) {
    await Promise.all(stack.standbys.map((s) => s.setApplyDelay(APPLY_DELAY_MS)));
    try {
      const written: { id: string; headers: Record<string, string> }[] = [];
      const atOnce: Record<string, number> = {};
      let bare404 = 0;
      for (let i = 0; i < PAIRS; i++) {
        const { id, res } = await createUser(edge);
        const headers = carry(res);
        written.push({ id, headers });
        const bare = await ask(`${edge}/api/users/${id}`);
        expect([200, 404], bare.text).toContain(bare.status);
        if (bare.status === 404) bare404++;
        const read = await ask(`${edge}/api/users/${id}`, { headers });
        expect(read.status, `${label} pair ${i + 1}, read with ${JSON.stringify(headers)}: ${read.text}`).toBe(200);
        expect(read.body.id).toBe(id);
        tally(atOnce, servedBy(read.headers));
      }
      await sleep(2 * APPLY_DELAY_MS);
      await lookAgain(edge);
      const later: Record<string, number> = {};
      for (const { id, headers } of written) {
        const read = await ask(`${edge}/api/users/${id}`, { headers });
        expect(read.status, read.text).toBe(200);
        tally(later, servedBy(read.headers));
      }
      console.log(
        `[edge-replicas deno] ${label}: reads right after the write ${JSON.stringify(atOnce)}, ${2 * APPLY_DELAY_MS} ms later ${JSON.stringify(later)}; token-less reads right after: ${bare404} × 404 of ${PAIRS}`,
      );
      expect(bare404, 'token-less reads right after a write that missed it (the lag is real)').toBeGreaterThan(0);
      expect(onReplicas(later), 'reads served by the standbys once they caught up').toBeGreaterThanOrEqual(0.8 * PAIRS);
    } finally {
      await Promise.all(stack.standbys.map((s) => s.setApplyDelay(0)));
    }
  }

  it(`read-your-writes on lagging standbys with the ${CONSISTENCY_HEADER} header: ${PAIRS} writes through the edge`, async () => {
    await readYourWrites('header', (res) => {
      const token = res.headers.get(CONSISTENCY_HEADER);
      expect(token, 'the gateway’s token, passed back by the edge').toMatch(/^lsn=[0-9A-F]+\/[0-9A-F]+$/);
      return { [CONSISTENCY_HEADER]: token! };
    });
  }, 60_000);

  it('read-your-writes with only the cookie the write set (CONSISTENCY_COOKIE=on on the gateway), passed back by the edge', async () => {
    await readYourWrites('cookie', (res) => {
      const cookies = res.headers.getSetCookie();
      const set = cookies.find((c) => c.startsWith(`${CONSISTENCY_COOKIE}=`));
      expect(set, `Set-Cookie through the edge: ${JSON.stringify(cookies)}`).toMatch(/; Path=\/; Max-Age=\d+; HttpOnly; SameSite=Lax$/);
      const pair = set!.split(';')[0]!;
      // The cookie carries the same token as the header.
      expect(decodeURIComponent(pair.slice(CONSISTENCY_COOKIE.length + 1))).toBe(res.headers.get(CONSISTENCY_HEADER));
      return { cookie: `theme=dark; ${pair}` };
    });
  }, 60_000);
});
