#!/usr/bin/env node
// The package's bin. It runs the compiled JavaScript in dist/ (built by
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
