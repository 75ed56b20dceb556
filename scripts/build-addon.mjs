#!/usr/bin/env node
// Builds the native addon from source with node-gyp (never a prebuilt download).
// npm puts its bundled node-gyp on PATH for the root package's own scripts.
// If a prerequisite is missing, say which one in a sentence and fail the install.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fail = (why) => {
  console.error(`shoal: cannot build the native addon: ${why}`);
  process.exit(1);
};
const has = (cmd, args = ['--version']) => spawnSync(cmd, args, { stdio: 'ignore' }).status === 0;

if (!has('python3')) fail('python3 is missing (node-gyp needs it); install it, e.g. `apt-get install python3`.');
if (!has('make')) fail('make is missing; install it, e.g. `apt-get install make`.');
if (!has('g++')) fail('a C++ compiler (g++) is missing; install it, e.g. `apt-get install g++`.');
if (!existsSync(join(root, 'node_modules', 'node-addon-api'))) fail('the node-addon-api package is missing; run `npm install` first.');
if (!existsSync(join(root, 'node_modules', '@c4312', 'blake3-native', 'c', 'blake3.c')))
  fail('the BLAKE3 C sources (package @c4312/blake3-native) are missing; run `npm install` first.');
if (!has('node-gyp')) fail('node-gyp is not on PATH; run this through `npm run build:addon` (npm bundles node-gyp) or `npm install -g node-gyp`.');

const r = spawnSync('node-gyp', ['rebuild', '--directory', join(root, 'addon')], { stdio: 'inherit' });
if (r.status !== 0)
  fail('node-gyp failed (see its output above); Node.js headers for this Node version must be available (package nodejs-dev or `node-gyp install`).');
