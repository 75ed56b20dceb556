// Which format an image file is in. Raw images Shoal copies itself; qcow2, vmdk and vhdx go
// through qemu-img. Detection reads the format's magic, so it works without qemu-img (and can then
// say that qemu-img is needed rather than import a qcow2 file's bytes as a raw disk).
import { open } from 'node:fs/promises';
import { extname } from 'node:path';
import { UsageError } from '../args.js';
import { CliError } from '../api-client.js';

const FORMATS = ['raw', 'qcow2', 'vmdk', 'vhdx'] as const;
export type ImageFormat = (typeof FORMATS)[number];

export function formatArg(value: string | undefined): ImageFormat | undefined {
  if (value === undefined) return undefined;
  if (!(FORMATS as readonly string[]).includes(value)) throw new UsageError(`--format "${value}" is not a format this command takes: use ${FORMATS.join(', ')}`);
  return value as ImageFormat;
}

/** The format of an existing image, from its first bytes. */
export async function detectFormat(path: string): Promise<{ format: ImageFormat; size: number }> {
  let head: Buffer;
  let size: number;
  try {
    const fh = await open(path, 'r');
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new CliError(`${path} is not a regular file`);
      size = st.size;
      head = Buffer.alloc(512);
      await fh.read(head, 0, 512, 0);
    } finally {
      await fh.close();
    }
  } catch (e) {
    if (e instanceof CliError) throw e;
    throw new CliError(`cannot read ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (head.subarray(0, 4).equals(Buffer.from([0x51, 0x46, 0x49, 0xfb]))) return { format: 'qcow2', size };
  if (head.subarray(0, 8).toString('latin1') === 'vhdxfile') return { format: 'vhdx', size };
  // A hosted sparse extent starts "KDMV"; a descriptor file starts with its comment line.
  if (head.subarray(0, 4).toString('latin1') === 'KDMV' || head.toString('latin1').startsWith('# Disk DescriptorFile')) return { format: 'vmdk', size };
  return { format: 'raw', size };
}

/** An export's format from --format, else from the file's extension (.qcow2, .vmdk, .vhdx), else raw. */
export function formatForName(path: string, flag: ImageFormat | undefined): ImageFormat {
  if (flag) return flag;
  const ext = extname(path).slice(1).toLowerCase();
  return (FORMATS as readonly string[]).includes(ext) ? (ext as ImageFormat) : 'raw';
}
