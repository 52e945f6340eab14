/**
 * Who may talk to the proxy from a browser. It runs on a developer's machine next to their
 * browser, and under trust auth it runs any SQL as anyone it is told to be: a web page must not
 * be able to drive it. Two doors, one rule for HTTP and WebSocket alike:
 * - `Origin`: a browser sends it on every cross-origin request and WebSocket; only the origins
 *   the proxy was given (the local edge) pass. Servers (Node, workerd) send none and pass.
 * - `Host`: DNS rebinding points a name the page controls at 127.0.0.1, so the page's requests
 *   are same-origin to it and carry no foreign Origin; they do carry that name in Host. Only IP
 *   literals, `localhost` and the name the proxy listens on pass (any port: a TCP forwarder in
 *   front keeps the name).
 */
import type { IncomingMessage } from 'node:http';
import { isIP } from 'node:net';

export interface BrowserAccess {
  /** Why the request must not be served, or undefined when it may. */
  refusal(req: IncomingMessage): string | undefined;
  /** The CORS headers for this request: the origin echoed when it is allowed, none otherwise. */
  corsHeaders(req: IncomingMessage): Record<string, string>;
}

/** `allowedOrigins`: exact origins (`http://127.0.0.1:8787`); `listenHost`: the host the proxy listens on. */
export function browserAccess(allowedOrigins: readonly string[], listenHost: string): BrowserAccess {
  const origins = new Set(allowedOrigins.map((o) => new URL(o).origin));
  const names = new Set(['localhost', bare(listenHost).toLowerCase()]);
  const originAllowed = (origin: string | undefined) => origin === undefined || origins.has(origin);
  return {
    refusal(req) {
      const host = hostName(req.headers.host);
      if (host !== undefined && isIP(host) === 0 && !names.has(host)) return `requests for host ${host} are not served`;
      const origin = req.headers.origin;
      if (!originAllowed(origin)) return `requests from origin ${origin} are not served (see the README: the proxy's origins)`;
      return undefined;
    },
    corsHeaders(req): Record<string, string> {
      const origin = req.headers.origin;
      return origin !== undefined && origins.has(origin) ? { 'Access-Control-Allow-Origin': origin, Vary: 'Origin' } : { Vary: 'Origin' };
    },
  };
}

/** The name in a Host header, lower-case, without port or IPv6 brackets. */
function hostName(header: string | undefined): string | undefined {
  if (header === undefined || header === '') return undefined;
  const name = header.startsWith('[') ? header.slice(1, header.indexOf(']')) : header.replace(/:\d*$/, '');
  return name.toLowerCase();
}

const bare = (host: string) => host.replace(/^\[(.*)\]$/, '$1');
