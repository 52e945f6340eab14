/**
 * The live dashboard (GET /dashboard): a static page, its script and uPlot, all carried as strings
 * (assets.ts, generated from their sources), so a Node gateway, workerd and Deno serve it alike,
 * with no file read at request time and nothing fetched from elsewhere. The page holds no figures:
 * its script polls `stats` beside it, so it reads only what /stats lets the caller read.
 *
 * Paths are relative (`dashboard/app.js`, `stats`), so the page works wherever the ops part is
 * mounted (`/dashboard`, `/ops/dashboard`). The CSP allows scripts, styles and fetches from this
 * origin only: no inline script or style, no eval, no frames, no forms sent anywhere.
 */
import { clientJs, pageCss, UPLOT_VERSION, uplotCss, uplotJs } from './assets.js';

export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const section = (id: string, title: string, note: string, body = '<div class="plot"></div>') =>
  `<section id="${id}" data-points="0"><h2>${title}</h2><p class="note">${note}</p>${body}</section>`;

const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>poolgate · dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="dashboard/uplot.css?v=${UPLOT_VERSION}">
<link rel="stylesheet" href="dashboard/app.css">
<script src="dashboard/uplot.js?v=${UPLOT_VERSION}" defer></script>
<script src="dashboard/app.js" defer></script>
</head>
<body data-polls="0">
<header><h1>poolgate</h1><span id="status">connecting…</span></header>
<form id="token" hidden>
<label>OPS_TOKEN <input name="token" type="password" autocomplete="off" required></label>
<button type="submit">Show the figures</button>
<button type="button" id="forget">Forget the token</button>
<p id="token-message"></p>
<p class="note">Kept in this tab's sessionStorage only and sent as <code>Authorization: Bearer</code> to <code>stats</code>.</p>
</form>
<main>
${section('rate', 'Requests per second, by route', 'Between two polls.')}
${section('latency', 'Latency p50 (solid) and p99 (dashed), ms', 'Of each route’s last 1024 requests.')}
${section('db', 'Database time per request, ms', 'Mean between two polls.')}
${section('acquire', 'Wait for a connection per request, ms', 'Mean between two polls: admission and pool checkout.')}
${section('pool', 'Pool connections', 'total, active, idle, requests waiting, and the size now (max); Node only.')}
${section('retries', 'Retries and sheds per second', 'Attempts made again, retries the budget refused, and requests shed by admission, by reason.')}
${section('clients', 'Which client served each route', 'Requests since start, by client.', '<div class="bars"></div>')}
${section('breakers', 'Circuit breakers', 'State at each poll, newest on the right: green closed, amber half-open, red open.', '<div class="strips"></div>')}
</main>
</body>
</html>
`;

const TEXT = 'charset=utf-8';

/** The page and its files, by path under the ops part. */
export const dashboardFiles: Record<string, { type: string; body: string; cacheControl: string }> = {
  '/dashboard': { type: `text/html; ${TEXT}`, body: html, cacheControl: 'no-cache' },
  '/dashboard/app.js': { type: `text/javascript; ${TEXT}`, body: clientJs, cacheControl: 'no-cache' },
  '/dashboard/app.css': { type: `text/css; ${TEXT}`, body: pageCss, cacheControl: 'no-cache' },
  // Versioned by the page's query string; the same name always serves the same bytes in one release.
  '/dashboard/uplot.js': { type: `text/javascript; ${TEXT}`, body: uplotJs, cacheControl: 'public, max-age=86400' },
  '/dashboard/uplot.css': { type: `text/css; ${TEXT}`, body: uplotCss, cacheControl: 'public, max-age=86400' },
};
