// Builds the dashboard: src/ -> dist/ (index.html, app.js, app.css), one
// bundle each, minified, no source maps. `node build.mjs --watch` rebuilds
// on every change (serve it with tapwire serve --ui-dir ui/dist).
import * as esbuild from 'esbuild';
import { copyFile, mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, 'dist');
await mkdir(dist, { recursive: true });

const options = {
  entryPoints: { app: path.join(here, 'src/main.js') },
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  outdir: dist,
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [{
    name: 'index-html',
    setup(build) {
      build.onEnd(async (r) => {
        if (!r.errors.length) await copyFile(path.join(here, 'src/index.html'), path.join(dist, 'index.html'));
      });
    },
  }],
};

if (process.argv.includes('--watch')) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
  console.log('watching ui/src, writing ui/dist');
} else {
  await esbuild.build(options);
}
