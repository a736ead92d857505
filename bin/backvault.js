#!/usr/bin/env node
// The package's bin. The sources are TypeScript run as they are: tsx is
// registered as the loader first, then the CLI takes over.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/index.ts');
await main(process.argv);
