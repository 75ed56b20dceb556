// Runs libnbd-python snippets (what nbdsh is made of) against a URI, failing loudly on error.
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PY, run } from '../helpers/tools.js';

const PRELUDE = `
import nbd, errno, os, sys, json
URI = os.environ['NBD_URI']
def connect(uri=URI, structured=True, meta=True, strict=True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    if meta:
        h.add_meta_context('base:allocation')
    if not strict:
        h.set_strict_mode(0)
    h.set_uri_allow_local_file(True)  # tls-certificates= / tls-psk-file= in nbds:// URIs
    h.connect_uri(uri)
    return h
def expect_errno(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        assert e.errnum == code, f'expected {errno.errorcode[code]}, got {e.errnum} ({e})'
        return
    raise AssertionError(f'expected {errno.errorcode[code]}, call succeeded')
def extents(h, count, offset, flags=0):
    out = []
    def cb(meta, off, ents, err):
        assert meta == 'base:allocation', meta
        out.extend(zip(ents[0::2], ents[1::2]))
        return 0
    h.block_status(count, offset, cb, flags)
    return out
`;

export async function py(uri: string, script: string, timeoutMs = 60_000): Promise<string> {
  // From a file, so a failing assert's traceback shows the source line.
  const dir = mkdtempSync(join(tmpdir(), 'shoal-py-'));
  const file = join(dir, 'script.py');
  writeFileSync(file, PRELUDE + script);
  try {
    const r = await run(PY, [file], { env: { NBD_URI: uri }, timeoutMs });
    if (r.status !== 0) throw new Error(`python exited ${r.status}:\n${r.stderr}\n${r.stdout}`);
    return r.stdout;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
