/**
 * The alerting rules shipped with the package (alerts/poolgate.rules.yml): Prometheus' `promtool`
 * accepts them, its unit tests (alerts.promtool.yml) see each alert fire where it should — labels
 * and rendered annotations — and stay silent otherwise, every alert has both kinds of case, and
 * every metric the rules read is one poolgate's /metrics renders (promtool cannot know a misspelt
 * name: a rule over a series that never exists is valid and never fires).
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { renderPrometheus } from '../../src/stats/prometheus.js';
import { everyFamilyRegistry, onPromtool, parsePrometheus, promtool, promtoolMissing } from '../helpers/prometheus.js';

const RULES = fileURLToPath(new URL('../../alerts/poolgate.rules.yml', import.meta.url));
const CASES = fileURLToPath(new URL('./alerts.promtool.yml', import.meta.url));
const rules = readFileSync(RULES, 'utf8');
const cases = readFileSync(CASES, 'utf8');
const alertNames = [...rules.matchAll(/^\s*- alert: (\w+)$/gm)].map((m) => m[1]!);

describe('alerts/poolgate.rules.yml', () => {
  it('names the alerts the README lists', () => {
    expect(alertNames).toEqual([
      'PoolgatePoolSaturated',
      'PoolgateAcquireWaitHigh',
      'PoolgateBreakerOpen',
      'PoolgateErrorRateHigh',
      'PoolgateReplicaLagging',
      'PoolgateReplicaDown',
      'PoolgateCacheHitRateCollapsed',
    ]);
  });

  it('reads only metrics that /metrics renders', () => {
    const { types } = parsePrometheus(renderPrometheus(everyFamilyRegistry().snapshot({ histograms: true })));
    const expressions = [...rules.matchAll(/^\s*expr: (?:\|-?\n)?([\s\S]*?)^\s*for:/gm)].map((m) => m[1]!);
    expect(expressions).toHaveLength(alertNames.length);
    const read = new Set(expressions.flatMap((e) => [...e.matchAll(/\bpoolgate_[a-z_]+/g)].map((m) => m[0])));
    const unknown = [...read].filter((name) => !types.has(name) && !types.has(name.replace(/_(bucket|sum|count)$/, '')));
    expect(unknown).toEqual([]);
    expect(read.size).toBeGreaterThan(8);
  });

  it('has, for every alert, a promtool case where it fires and one where it stays silent', () => {
    const evals = [...cases.matchAll(/alertname: (\w+)\n\s+exp_alerts:( \[\])?/g)].map((m) => ({ name: m[1]!, silent: !!m[2] }));
    for (const name of alertNames) {
      expect(
        evals.some((e) => e.name === name && !e.silent),
        `${name} fires somewhere`,
      ).toBe(true);
      expect(
        evals.some((e) => e.name === name && e.silent),
        `${name} stays silent somewhere`,
      ).toBe(true);
    }
    expect(evals.filter((e) => !alertNames.includes(e.name))).toEqual([]);
  });

  it.skipIf(!!promtoolMissing)(onPromtool('passes `promtool check rules`'), () => {
    const { status, output } = promtool(['check', 'rules', RULES]);
    expect(output).toContain(`SUCCESS: ${alertNames.length} rules found`);
    expect(status).toBe(0);
  });

  it.skipIf(!!promtoolMissing)(onPromtool('passes its `promtool test rules` cases: each alert fires when it should, and only then'), () => {
    const { status, output } = promtool(['test', 'rules', CASES]);
    expect(output).toContain('SUCCESS');
    expect(output).not.toContain('FAILED');
    expect(status).toBe(0);
  });
});
