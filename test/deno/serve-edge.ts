/**
 * Runs under Deno, not Node: serves a built Netlify Edge bundle the way Netlify's edge runtime
 * calls it, `default(request, context)`, on 127.0.0.1 and a free port. The bundle reads its
 * configuration from Deno.env. Prints one line, `listening <port>`, once it accepts connections.
 *
 *   deno run --no-prompt --allow-net=127.0.0.1 --allow-env --allow-read=<dir> serve-edge.ts <bundle.js>
 */
export {};

declare const Deno: {
  args: string[];
  exit(code: number): never;
  serve(
    options: { port: number; hostname: string; onListen(addr: { port: number }): void },
    handler: (request: Request) => Response | Promise<Response>,
  ): unknown;
};

type EdgeHandler = (request: Request, context: unknown) => Response | Promise<Response>;

const bundle = Deno.args[0];
if (!bundle) {
  console.error('usage: serve-edge.ts <bundle.js>');
  Deno.exit(2);
}
const mod = (await import(new URL(`file://${bundle}`).href)) as { default: EdgeHandler };

// A minimal Netlify context: the entry only passes it through to hono/netlify.
Deno.serve({ port: 0, hostname: '127.0.0.1', onListen: ({ port }) => console.log(`listening ${port}`) }, (request) =>
  mod.default(request, {}),
);
