#!/usr/bin/env -S MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 node --max-semi-space-size=2 --expose-gc-as=backvaultGc
// The package's bin. The first line sets what keeps the server's memory flat
// and small, which must be set before the process starts: glibc returns
// large freed buffers to the system at once instead of keeping them in
// per-thread arenas, V8's young generation is 4 MiB instead of 32 MiB, and
// the collector is exposed (as backvaultGc, not as gc) so the stream code can
// free dead transferred buffers early (src/platform/gc.ts; docs/ARCHITECTURE.md,
// "Memory"). Run as `backvault ...`, `./bin/backvault.js`
// or `npm start`; `node bin/backvault.js` works too but without them.
// It runs the compiled JavaScript in dist/ (built by
// `npm run build`, which `npm ci`, `npm start` and `npm test` run), so no
// TypeScript loader sits in the server's memory. A checkout that was never
// built, or BACKVAULT_FROM_SOURCE=1, runs the sources under tsx instead.
import { existsSync } from 'node:fs';

const compiled = new URL('../dist/cli/index.js', import.meta.url);
let main;
if (process.env.BACKVAULT_FROM_SOURCE !== '1' && existsSync(compiled)) {
  ({ main } = await import(compiled.href));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../src/cli/index.ts'));
}
await main(process.argv);
