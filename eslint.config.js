// Type-aware lint for the whole repo: typescript-eslint's recommended type-checked rules, which
// include no-floating-promises and no-misused-promises (a dropped promise here is a lost error).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['node_modules/', 'dist/', '.data/', '.wrangler/', 'coverage/', 'bench/results/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
    },
  },
  {
    // The fitness example is built on the public API only: what `poolgate` and its subpath exports
    // give a user (src/index.ts and the runtime entries), never poolgate's internals.
    files: ['src/fitness/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: String.raw`^\.\./(?!index\.js$|\.\./index\.js$|\.\./runtime/(?:node|worker|netlify-edge|netlify-function|functions|edge-functions)\.js$|app\.js$)`,
              message: 'The fitness example imports only the public API (src/index.ts, src/runtime/<entry>.ts).',
            },
          ],
        },
      ],
    },
  },
  {
    // `npm start`'s entry hands the example to the local topology, as `poolgate dev` does a user's app.
    files: ['src/fitness/entries/local.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: String.raw`^\.\./(?!app\.js$|seed\.js$|\.\./local/(?:topology|build)\.js$)`,
              message: "npm start's entry imports the example (app, seed) and the local topology and build only.",
            },
          ],
        },
      ],
    },
  },
  {
    // Tests read JSON bodies as any on purpose (the assertion is the type check); promises stay strict.
    files: ['test/**', '**/*.test.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-explicit-any': 'off',
    },
  },
  {
    // Plain JavaScript (this file, the bin shim) has no types to check against.
    files: ['**/*.mjs', '**/*.js'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      ...tseslint.configs.disableTypeChecked.languageOptions,
      globals: { process: 'readonly', console: 'readonly', URL: 'readonly' },
    },
  },
);
