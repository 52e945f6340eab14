/**
 * The run's closing line about skipped tests, so a run without a database says what it left out:
 *
 *   poolgate: 37 tests skipped: they need a real PostgreSQL (set TEST_DATABASE_URL=postgres://… to run them)
 *
 * A skipped test needs a real PostgreSQL when its name, a describe around it or its skip note
 * (`ctx.skip(note)`) says `TEST_DATABASE_URL` (test/helpers/db.ts `onRealPostgres` writes such
 * names); any other skip gives its reason in its name too, and is counted apart. Nothing is printed when nothing skipped.
 *
 * It comes as a plugin that adds the reporter once vitest has settled its reporters: reporters
 * given on the command line (.ci/run's `--reporter=default --reporter=json`) replace those of the
 * config, and the line must be there in CI too.
 */
import type { Reporter, TestCase, TestModule, TestSuite, Vitest } from 'vitest/node';
import type { Plugin } from 'vitest/config';

/** The variable a skipped test names when a real PostgreSQL would run it. */
export const DATABASE_VARIABLE = 'TEST_DATABASE_URL';

export interface SkipCounts {
  /** Skipped tests that name TEST_DATABASE_URL. */
  needDatabase: number;
  /** Skipped for any other reason (given in the name). */
  other: number;
}

/** The closing line for `counts`, or undefined when nothing was skipped. */
export function skipSummary({ needDatabase, other }: SkipCounts): string | undefined {
  const total = needDatabase + other;
  if (total === 0) return undefined;
  const tests = (n: number) => `${n} test${n === 1 ? '' : 's'}`;
  const setIt = `set ${DATABASE_VARIABLE}=postgres://… to run them`;
  if (other === 0) return `poolgate: ${tests(total)} skipped: they need a real PostgreSQL (${setIt})`;
  if (needDatabase === 0) return `poolgate: ${tests(total)} skipped, each with its reason in its name`;
  return `poolgate: ${tests(total)} skipped: ${needDatabase} need a real PostgreSQL (${setIt}), ${other} give another reason in their names`;
}

/**
 * Counts the skipped tests of a finished run. Under a name filter (`-t`) the tests it left out are
 * skipped too: only those it selected count.
 */
export function countSkips(modules: ReadonlyArray<TestModule>, namePattern?: RegExp): SkipCounts {
  const counts: SkipCounts = { needDatabase: 0, other: 0 };
  for (const module of modules) {
    for (const test of module.children.allTests('skipped')) {
      if (leftOutByFailure(test)) continue; // a failed beforeAll: the run reports it as a failure
      const name = spacedName(test);
      if (namePattern && !namePattern.test(name)) continue;
      const result = test.result();
      const note = result.state === 'skipped' ? (result.note ?? '') : '';
      if (name.includes(DATABASE_VARIABLE) || note.includes(DATABASE_VARIABLE)) counts.needDatabase++;
      else counts.other++;
    }
  }
  return counts;
}

/** Whether a suite around the test (or its file) failed outside any test, so it never ran. */
function leftOutByFailure(test: TestCase): boolean {
  for (let at: TestSuite | TestModule = test.parent; ; at = at.parent) {
    if (at.errors().length > 0) return true;
    if (at.type === 'module') return false;
  }
}

/** The describe titles and the test's name, joined by spaces as vitest matches `-t` against them. */
function spacedName(test: TestCase): string {
  const names: string[] = [];
  for (let at: TestCase | TestSuite | TestModule = test; at.type !== 'module'; at = at.parent) names.unshift(at.name);
  return names.join(' ');
}

class SkipSummaryReporter implements Reporter {
  #vitest: Vitest | undefined;

  onInit(vitest: Vitest): void {
    this.#vitest = vitest;
  }

  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const line = skipSummary(countSkips(modules, this.#vitest?.config.testNamePattern));
    if (line) this.#vitest?.logger.log(line);
  }
}

/** The plugin for vitest.config.ts: the closing line beside whatever reporters the run uses. */
export function skipSummaryPlugin(): Plugin {
  const reporter = new SkipSummaryReporter();
  return {
    name: 'poolgate:skip-summary',
    configureVitest({ vitest }) {
      const reporters = vitest.config.reporters as unknown[];
      if (!reporters.includes(reporter)) reporters.push(reporter);
    },
  };
}
