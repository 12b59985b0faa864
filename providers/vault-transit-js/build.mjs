// Builds provider.js into a component: `node build.mjs OUT.wasm [WIT_DIR]`
// (WIT_DIR: kmsgate's `wit/`, by default the repository's; a project made by
// `kmsgate provider new --lang js` has its own copy).
// componentize-js's API (its jco CLI failed here once), with `http` and
// `fetch-event` disabled: otherwise the component imports wasi:http, which
// kmsgate does not link (providers reach the network only through
// kmsgate:provider/outbound-http).
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (path) => fileURLToPath(new URL(path, import.meta.url));
const [out, wit = here('../../wit')] = process.argv.slice(2);
if (!out) {
  console.error('usage: node build.mjs OUT.wasm [WIT_DIR]');
  process.exit(2);
}
const { component } = await componentize(await readFile(here('provider.js'), 'utf8'), {
  witPath: wit,
  worldName: 'provider',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
