// Runs a test binary built for wasm32-wasip1 under Node's WASI, as cargo's runner:
//   CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-turbo-fast-api-calls tools/wasi-test.mjs" \
//   RUSTFLAGS="-C target-feature=+simd128" \
//   cargo test --release --lib --no-default-features --target wasm32-wasip1
// Node runs WebAssembly's SIMD128 as a browser does (V8), so the engine's unit tests (every
// kernel against its reference twin) check the vector code the tab runs. Node 20's fast API
// calls into WASI corrupt its heap now and then (nodejs/node#53087), hence the flag.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: 'preview1',
  args: [file, ...args],
  // Only what the tests read (a whole CI environment has crashed Node's WASI at exit).
  env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k === 'CI' || k.startsWith('RUST'))),
  // The tests' temporary files: the whole file system, as a native test sees it.
  preopens: { '/tmp': '/tmp' },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
// Exit at once with the tests' status (Node's teardown of a WASI instance has crashed).
process.exit(wasi.start(instance));
