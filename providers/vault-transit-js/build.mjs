// Builds provider.js into a component: `node build.mjs OUT.wasm`.
// componentize-js's API (its jco CLI failed here once), with `http` and
// `fetch-event` disabled: otherwise the component imports wasi:http, which
// kmsgate does not link (providers reach the network only through
// kmsgate:provider/outbound-http).
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs OUT.wasm');
  process.exit(2);
}
const { component } = await componentize(await readFile(here('provider.js'), 'utf8'), {
  witPath: here('../../wit'),
  worldName: 'provider',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
