/**
 * What `npm pack` puts into poolgate's tarball, after `npm run build`: the compiled library, the
 * bin and the Prometheus alerting rules, nothing of the development side (tests, benches, local
 * data, sources, source maps, the example app, the build script, the deploy bundles); every file
 * the exports map and the bin name, and the local topology `poolgate dev` runs; and shipped code
 * that imports only what a consumer's install has — the dependencies, the peers, Node's builtins —
 * with the optional peers (PGlite, esbuild, miniflare) reached only lazily.
 * Imports are read with TypeScript's parser, not a regex: the JSDoc examples in the shipped
 * JavaScript say `import … from 'poolgate/…'`, and a regex would take them for imports.
 */
import { readFile } from 'node:fs/promises';
import { builtinModules } from 'node:module';
import { dirname, join, posix } from 'node:path';
import ts from 'typescript';
import { beforeAll, describe, expect, it } from 'vitest';
import { ROOT, buildPackage, packedFiles, withBuildLock } from '../helpers/package.js';

interface PackageJson {
  exports: Record<string, string | Record<string, string>>;
  bin: Record<string, string>;
  dependencies: Record<string, string>;
  peerDependencies: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

/** Paths no tarball of poolgate may hold: the development side of the repository. */
const DEVELOPMENT_ONLY: [what: string, pattern: RegExp][] = [
  ['tests', /^test\//],
  ['test files', /\.test\./],
  ['benches', /^bench\//],
  ['local data', /(^|\/)\.data(\/|$)/],
  ['source maps', /\.map$/],
  ['sources other than the bin', /^src\/(?!bin\/poolgate\.mjs$)/],
  ['the example app', /^dist\/lib\/fitness(\/|$)/],
  // The repository's own build script (it bundles the example's entries); `poolgate dev` ships the rest of local/.
  ['the build script', /^dist\/lib\/local\/build\./],
  ['the deploy bundles (dist/worker, dist/netlify, dist/public)', /^dist\/(?!lib\/)/],
  [
    'development configuration',
    /^(tsconfig[^/]*\.json|eslint\.config\.|vitest\.config\.|\.prettier|wrangler\.toml|netlify\.toml|\.github\/|\.ci\/)/,
  ],
  ['dot files', /(^|\/)\.(env|npmrc|wrangler|netlify)/],
];

const isBuiltin = (specifier: string) => specifier.startsWith('node:') || builtinModules.includes(specifier.split('/')[0]!);
/** `@scope/name/sub` → `@scope/name`; `name/sub` → `name`. */
const packageOf = (specifier: string) =>
  specifier
    .split('/')
    .slice(0, specifier.startsWith('@') ? 2 : 1)
    .join('/');
const isRelative = (specifier: string) => specifier.startsWith('./') || specifier.startsWith('../');

interface Import {
  specifier: string;
  /** `import(…)`: loaded only when that code runs. */
  dynamic: boolean;
}

/** The module specifiers a shipped file names: import/export declarations, import(), require(), and import("…") types. */
function importsOf(path: string, text: string): Import[] {
  const kind = path.endsWith('.d.ts') ? ts.ScriptKind.TS : ts.ScriptKind.JS;
  const source = ts.createSourceFile(path, text, ts.ScriptTarget.Latest, false, kind);
  const found: Import[] = [];
  const visit = (node: ts.Node): void => {
    if (
      (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) &&
      node.moduleSpecifier &&
      ts.isStringLiteral(node.moduleSpecifier)
    ) {
      found.push({ specifier: node.moduleSpecifier.text, dynamic: false });
    } else if (ts.isCallExpression(node) && node.arguments[0] && ts.isStringLiteralLike(node.arguments[0])) {
      if (node.expression.kind === ts.SyntaxKind.ImportKeyword) found.push({ specifier: node.arguments[0].text, dynamic: true });
      else if (ts.isIdentifier(node.expression) && node.expression.text === 'require')
        found.push({ specifier: node.arguments[0].text, dynamic: false });
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteral(node.argument.literal)) {
      found.push({ specifier: node.argument.literal.text, dynamic: false });
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

let files: string[];
let pkg: PackageJson;
/** Each shipped .js/.mjs/.d.ts file's imports. */
const imports = new Map<string, Import[]>();

beforeAll(async () => {
  files = await withBuildLock(async () => {
    await buildPackage();
    const listed = await packedFiles();
    // Read while the lock is held: nobody rebuilds dist/ under us.
    for (const file of listed.filter((f) => /\.(m?js|d\.ts)$/.test(f)))
      imports.set(file, importsOf(file, await readFile(join(ROOT, file), 'utf8')));
    return listed;
  });
  pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8')) as PackageJson;
}, 240_000);

/** Where a relative specifier of `from` points, as a package path. */
const resolveFrom = (from: string, specifier: string) => posix.normalize(posix.join(dirname(from), specifier));

/** The shipped files loading `entry` runs at once: its static imports, followed through the package. */
function loadedWith(entry: string): Set<string> {
  const seen = new Set<string>();
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const { specifier, dynamic } of imports.get(file) ?? [])
      if (!dynamic && isRelative(specifier)) queue.push(resolveFrom(file, specifier));
  }
  return seen;
}

/** The package files the exports map and the bin name (conditions flattened). */
function namedTargets(): string[] {
  const targets = Object.values(pkg.exports).flatMap((entry) => (typeof entry === 'string' ? [entry] : Object.values(entry)));
  return [...targets, ...Object.values(pkg.bin)].map((target) => posix.normalize(target));
}

describe('the tarball', () => {
  it('holds nothing of the development side', () => {
    const offending = files.flatMap((file) =>
      DEVELOPMENT_ONLY.filter(([, pattern]) => pattern.test(file)).map(([what]) => `${file} (${what})`),
    );
    expect(offending).toEqual([]);
  });

  it('holds the compiled library with declarations, the bin, the README and package.json', () => {
    expect(files).toContain('package.json');
    expect(files).toContain('README.md');
    expect(files).toContain('src/bin/poolgate.mjs');
    const js = files.filter((f) => f.startsWith('dist/lib/') && f.endsWith('.js'));
    expect(js.length).toBeGreaterThan(20);
    for (const file of js) expect(files, `${file} has its declarations`).toContain(file.replace(/\.js$/, '.d.ts'));
  });

  it('holds the Prometheus alerting rules, and not their promtool test cases', () => {
    expect(files).toContain('alerts/poolgate.rules.yml');
    expect(files.filter((f) => f.startsWith('alerts/'))).toEqual(['alerts/poolgate.rules.yml']);
    expect(files.filter((f) => f.includes('promtool'))).toEqual([]);
  });

  it('holds what `poolgate dev` runs: the local topology and each of its parts', () => {
    for (const part of ['dev', 'topology', 'worker-bundle', 'workerd', 'dev-edge', 'stop-signals', 'ports', 'embedded', 'neon-proxy/index'])
      expect(files).toContain(`dist/lib/local/${part}.js`);
  });

  it('holds every file the exports map and the bin name', () => {
    const missing = namedTargets().filter((target) => target !== 'package.json' && !files.includes(target));
    expect(missing).toEqual([]);
    for (const [subpath, entry] of Object.entries(pkg.exports)) {
      if (subpath === './package.json') continue;
      expect(entry, `${subpath} has types and a default`).toEqual({
        types: expect.stringMatching(/\.d\.ts$/),
        default: expect.stringMatching(/\.js$/),
      });
    }
  });

  it('every relative import of a shipped file (JavaScript or declarations) is shipped too', () => {
    const dangling: string[] = [];
    for (const [file, found] of imports) {
      for (const { specifier } of found.filter((i) => isRelative(i.specifier))) {
        const target = resolveFrom(file, specifier);
        const shipped = file.endsWith('.d.ts') ? target.replace(/\.js$/, '.d.ts') : target;
        if (!files.includes(shipped)) dangling.push(`${file} → ${specifier}`);
      }
    }
    expect(dangling).toEqual([]);
  });
});

describe('what the shipped code imports', () => {
  const shippedCode = () => [...imports].filter(([file]) => !file.endsWith('.d.ts'));

  it('every bare import is a dependency, a peer or a Node builtin', () => {
    const installed = new Set([...Object.keys(pkg.dependencies), ...Object.keys(pkg.peerDependencies)]);
    const unknown: string[] = [];
    for (const [file, found] of [...imports]) {
      for (const { specifier, dynamic } of found) {
        if (isRelative(specifier) || isBuiltin(specifier) || installed.has(packageOf(specifier))) continue;
        // The bin runs src/cli.ts through tsx only in a source checkout; the tarball has no src/cli.ts.
        if (file === 'src/bin/poolgate.mjs' && dynamic && packageOf(specifier) === 'tsx' && !files.includes('src/cli.ts')) continue;
        unknown.push(`${file} → ${specifier}${dynamic ? ' (dynamic)' : ''}`);
      }
    }
    expect(unknown).toEqual([]);
  });

  it('every dependency is used by the shipped code (no development tool among them)', () => {
    const used = new Set(shippedCode().flatMap(([, found]) => found.map((i) => packageOf(i.specifier))));
    // `@types/pg` is what a declaration's `import pg from 'pg'` resolves to: the public types need it.
    const typesUsed = new Set(
      [...imports].filter(([file]) => file.endsWith('.d.ts')).flatMap(([, found]) => found.map((i) => `@types/${packageOf(i.specifier)}`)),
    );
    expect(Object.keys(pkg.dependencies).filter((name) => !used.has(name) && !typesUsed.has(name))).toEqual([]);
  });

  it('the optional peers (PGlite, esbuild, miniflare) are reached only through import(): no entry loads them up front', () => {
    const optional = new Set(
      Object.entries(pkg.peerDependenciesMeta ?? {})
        .filter(([, meta]) => meta.optional)
        .map(([name]) => name),
    );
    expect([...optional].sort()).toEqual(['@electric-sql/pglite', '@electric-sql/pglite-socket', 'esbuild', 'miniflare']);
    // What loading each entry (the exports, the bin and the CLI it loads) runs at once: static imports only.
    const entries = [...namedTargets().filter((t) => /\.m?js$/.test(t)), 'dist/lib/cli.js'];
    const eager = entries.flatMap((entry) =>
      [...loadedWith(entry)].flatMap((file) =>
        (imports.get(file) ?? [])
          .filter((i) => !i.dynamic && optional.has(packageOf(i.specifier)))
          .map((i) => `${entry}: ${file} → ${i.specifier}`),
      ),
    );
    expect(eager).toEqual([]);
    // The walk does follow the graph, and the lazy paths exist: the embedded database, when DATABASE_URL is
    // unset; `poolgate dev` (the topology, esbuild's bundle, workerd), once its peers are found.
    expect(loadedWith('dist/lib/runtime/node.js')).toContain('dist/lib/runtime/node-app.js');
    expect(loadedWith('dist/lib/runtime/node.js')).not.toContain('dist/lib/local/embedded.js');
    expect(loadedWith('dist/lib/local/topology.js')).toContain('dist/lib/local/workerd.js');
    expect(loadedWith('dist/lib/local/topology.js')).not.toContain('dist/lib/local/embedded.js');
    const usesOptional = shippedCode().flatMap(([file, found]) =>
      found.filter((i) => !i.dynamic && optional.has(packageOf(i.specifier))).map((i) => `${file} → ${packageOf(i.specifier)}`),
    );
    expect([...new Set(usesOptional)].sort()).toEqual([
      'dist/lib/local/embedded.js → @electric-sql/pglite',
      'dist/lib/local/embedded.js → @electric-sql/pglite-socket',
      'dist/lib/local/worker-bundle.js → esbuild',
      'dist/lib/local/workerd.js → miniflare',
    ]);
  });
});
