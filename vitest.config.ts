import { defineConfig } from 'vitest/config';
import { skipSummaryPlugin } from './test/reporters/skip-summary.js';

export default defineConfig({
  // After the reporters' summary: how many tests skipped, and that TEST_DATABASE_URL runs them.
  plugins: [skipSummaryPlugin()],
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Suites share one PostgreSQL and spawn real processes; two cores.
    maxWorkers: 2,
    fileParallelism: true,
  },
});
