/**
 * Reads a V8 .cpuprofile (the format `node --cpu-prof` and node:inspector write) and tells where
 * a server's CPU went: self time per function and per package or source file, and, against a
 * second profile of the same step, the extra CPU per request by group.
 */
import { readFileSync } from 'node:fs';

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples?: number[];
  timeDeltas?: number[];
}

export interface ProfileGroup {
  group: string;
  ms: number;
  /** Share of the non-idle sampled time. */
  share: number;
  usPerRequest: number;
}

export interface ProfileFunction {
  fn: string;
  where: string;
  group: string;
  selfMs: number;
  share: number;
}

export interface ProfileSummary {
  /** Non-idle sampled CPU on the main thread. */
  busyMs: number;
  idleMs: number;
  requests: number;
  busyUsPerRequest: number;
  groups: ProfileGroup[];
  top: ProfileFunction[];
  /** The heaviest functions of poolgate's own code (src/) and zod. */
  ownTop: ProfileFunction[];
}

/** Native bindings that are socket reads and writes: on a VM their cost is mostly the system call. */
const NATIVE_IO =
  /^(writev|writeBuffer|writeUtf8String|writeLatin1String|writeAsciiString|writeUcs2String|readStart|readStop|shutdown|onStreamRead)$/;

/** Which package, runtime part or source file a frame belongs to. */
export function groupOf(functionName: string, url: string): string {
  if (functionName === '(garbage collector)') return 'V8: garbage collector';
  if (functionName === '(program)') return 'V8: program (native, outside JS)';
  if (url === '') return NATIVE_IO.test(functionName) ? 'native: socket I/O (syscalls)' : 'V8: builtins';
  if (url.includes('/deps/undici/')) return 'undici (Web Headers/Request/Response)';
  if (url.startsWith('node:')) {
    const first = url
      .slice(5)
      .replace(/^internal\//, '')
      .split('/')[0]!;
    const name =
      first.startsWith('_http_') || first === 'http'
        ? 'http'
        : first === 'streams' || first.startsWith('_stream') || first === 'stream'
          ? 'streams'
          : first;
    return `node:${name}`;
  }
  const nm = url.lastIndexOf('/node_modules/');
  if (nm !== -1) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  const src = url.indexOf('/src/');
  if (src !== -1) return `poolgate ${url.slice(src + 1)}`;
  const bench = url.indexOf('/bench/');
  if (bench !== -1) return `bench ${url.slice(bench + 1)}`;
  return url;
}

const shortWhere = (url: string, line: number) => {
  if (!url) return '';
  const nm = url.lastIndexOf('/node_modules/');
  const s = nm !== -1 ? url.slice(nm + '/node_modules/'.length) : url.indexOf('/src/') !== -1 ? url.slice(url.indexOf('/src/') + 1) : url;
  return `${s}:${line + 1}`;
};

/**
 * Summarises one profile, or several of the same server (alternating rounds) as one;
 * `requests` is how many requests the server answered while it was sampled, in all of them.
 */
export function summariseProfile(files: string | readonly string[], requests: number, topN = 15): ProfileSummary {
  const fn = (f: { fn: string; where: string; group: string; us: number }, busyUs: number): ProfileFunction => ({
    fn: f.fn,
    where: f.where,
    group: f.group,
    selfMs: f.us / 1000,
    share: f.us / Math.max(1, busyUs),
  });
  let busyUs = 0;
  let idleUs = 0;
  const groups = new Map<string, number>();
  const fns = new Map<string, { fn: string; where: string; group: string; us: number }>();
  for (const file of typeof files === 'string' ? [files] : files) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
    const byId = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
    const samples = profile.samples ?? [];
    const deltas = profile.timeDeltas ?? [];
    const selfUs = new Map<number, number>();
    // A sample stands for the time until the next one.
    for (let i = 0; i < samples.length; i++) {
      const dt = deltas[i + 1] ?? 0;
      selfUs.set(samples[i]!, (selfUs.get(samples[i]!) ?? 0) + Math.max(0, dt));
    }
    for (const [id, us] of selfUs) {
      const f = byId.get(id);
      if (!f) continue;
      if (f.functionName === '(idle)') {
        idleUs += us;
        continue;
      }
      if (f.functionName === '(root)') continue;
      busyUs += us;
      const group = groupOf(f.functionName, f.url);
      groups.set(group, (groups.get(group) ?? 0) + us);
      const where = shortWhere(f.url, f.lineNumber);
      const name = f.functionName || '(anonymous)';
      const key = `${name} ${where}`;
      const entry = fns.get(key) ?? { fn: name, where, group, us: 0 };
      entry.us += us;
      fns.set(key, entry);
    }
  }
  const n = Math.max(1, requests);
  const sorted = [...fns.values()].sort((a, b) => b.us - a.us);
  return {
    busyMs: busyUs / 1000,
    idleMs: idleUs / 1000,
    requests,
    busyUsPerRequest: busyUs / n,
    groups: [...groups]
      .sort((a, b) => b[1] - a[1])
      .map(([group, us]) => ({ group, ms: us / 1000, share: us / Math.max(1, busyUs), usPerRequest: us / n })),
    top: sorted.slice(0, topN).map((f) => fn(f, busyUs)),
    ownTop: sorted
      .filter((f) => f.group.startsWith('poolgate ') || f.group === 'zod')
      .slice(0, 8)
      .map((f) => fn(f, busyUs)),
  };
}

export interface GroupDelta {
  group: string;
  baselineUs: number;
  subjectUs: number;
  extraUs: number;
}

/** CPU per request by group, subject minus baseline, largest extra first. */
export function compareProfiles(baseline: ProfileSummary, subject: ProfileSummary): GroupDelta[] {
  const names = new Set([...baseline.groups.map((g) => g.group), ...subject.groups.map((g) => g.group)]);
  const us = (s: ProfileSummary, g: string) => s.groups.find((x) => x.group === g)?.usPerRequest ?? 0;
  return [...names]
    .map((group) => ({
      group,
      baselineUs: us(baseline, group),
      subjectUs: us(subject, group),
      extraUs: us(subject, group) - us(baseline, group),
    }))
    .sort((a, b) => b.extraUs - a.extraUs);
}
