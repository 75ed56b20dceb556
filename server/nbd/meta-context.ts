// NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT (doc/proto.md "Metadata querying"):
// which meta contexts an export offers, and which ones the client selected for transmission.
//
// base:allocation is the engine's own; any other context is the provider's (metaContexts() names
// them, the opened export answers their status). Queries match names exactly; in a LIST, a query
// ending in ':' is a wildcard for every name it begins ("base:", "qemu:", "qemu:dirty-bitmap:"),
// as the spec recommends for an empty leaf-name and as qemu documents for its namespace. A SET
// never selects by wildcard, and a name nothing offers is simply not selected (no error).
import type { ExportProvider, NbdSession } from '../volume/export-port.js';
import * as C from './constants.js';
import { decodeString } from './strings.js';

/** A context selected for transmission: the id its NBD_REPLY_TYPE_BLOCK_STATUS chunks carry. */
export interface SelectedContext {
  id: number;
  name: string;
}

/** Contexts one SET may select (each BLOCK_STATUS answers all of them); more is NBD_REP_ERR_TOO_BIG. */
const MAX_SELECTED_CONTEXTS = 64;

type Reply = (option: number, type: number, data?: Buffer) => void;

/** The selection made by the last SET_META_CONTEXT of a handshake. */
export class MetaContextSelection {
  /** The export name the last SET named (as the client sent it), null before any SET. */
  private exportName: string | null = null;
  private selected: SelectedContext[] = [];

  constructor(
    private readonly provider: ExportProvider,
    /** The real name of an export name as sent ("" is the default export), or null. */
    private readonly resolve: (name: string) => string | null,
    /** The connection's session now (TLS identity): a context of an export it may not see is not offered. */
    private readonly session: () => NbdSession,
  ) {}

  /** The contexts selected for `exportName` (as sent with GO/EXPORT_NAME): none if the last SET named another. */
  for(exportName: string): SelectedContext[] {
    return this.exportName === exportName ? this.selected : [];
  }

  /** Answers a LIST_META_CONTEXT or SET_META_CONTEXT option; `structured` says whether structured replies are on. */
  handle(option: number, data: Buffer, structured: boolean, reply: Reply): void {
    const list = option === C.NBD_OPT_LIST_META_CONTEXT;
    const error = (type: number, msg: string) => {
      if (!list) this.clear(); // a failed SET still replaces the selection
      reply(option, type, Buffer.from(msg, 'utf8'));
    };
    if (!structured) return error(C.NBD_REP_ERR_INVALID, 'structured replies must be negotiated first');
    const parsed = parseMetaQuery(data);
    if (typeof parsed === 'string') return error(C.NBD_REP_ERR_INVALID, parsed);
    const real = this.resolve(parsed.exportName);
    const offered = [C.BASE_ALLOCATION, ...(real === null ? [] : (this.provider.metaContexts?.(real, this.session()) ?? []))];
    const names = list ? matchList(offered, parsed.queries) : matchSet(offered, parsed.queries);
    if (!list && names.length > MAX_SELECTED_CONTEXTS) return error(C.NBD_REP_ERR_TOO_BIG, `at most ${MAX_SELECTED_CONTEXTS} meta contexts can be selected at once`);
    if (!list) {
      this.exportName = parsed.exportName;
      let next = C.BASE_ALLOCATION_ID + 1;
      this.selected = names.map((name) => ({ id: name === C.BASE_ALLOCATION ? C.BASE_ALLOCATION_ID : next++, name }));
    }
    for (const c of list ? names.map((name) => ({ id: 0, name })) : this.selected) reply(option, C.NBD_REP_META_CONTEXT, contextReply(c));
    reply(option, C.NBD_REP_ACK);
  }

  private clear(): void {
    this.exportName = null;
    this.selected = [];
  }
}

/** LIST: everything with no query; else exact names and wildcard prefixes ending in ':'. */
function matchList(offered: string[], queries: string[]): string[] {
  if (queries.length === 0) return offered;
  return offered.filter((name) => queries.some((q) => q === name || (q.endsWith(':') && name.startsWith(q))));
}

/** SET: exact names only, each once. */
function matchSet(offered: string[], queries: string[]): string[] {
  const wanted = new Set(queries);
  return offered.filter((name) => wanted.has(name));
}

function contextReply(c: SelectedContext): Buffer {
  const name = Buffer.from(c.name, 'utf8');
  const b = Buffer.allocUnsafe(4 + name.length);
  b.writeUInt32BE(c.id, 0);
  name.copy(b, 4);
  return b;
}

/** Parses LIST/SET_META_CONTEXT data: u32 name length, name, u32 query count, (u32 length, query)*. */
function parseMetaQuery(data: Buffer): { exportName: string; queries: string[] } | string {
  let p = 0;
  if (data.length < 8) return 'option too short';
  const nameLen = data.readUInt32BE(p);
  p += 4;
  if (nameLen > data.length - 8) return 'export name length exceeds option length';
  const exportName = decodeString(data.subarray(p, p + nameLen));
  if (exportName === null) return 'export name is not a valid string';
  p += nameLen;
  const n = data.readUInt32BE(p);
  p += 4;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (data.length - p < 4) return 'query count exceeds option length';
    const qlen = data.readUInt32BE(p);
    p += 4;
    if (qlen > data.length - p) return 'query length exceeds option length';
    const q = decodeString(data.subarray(p, p + qlen));
    if (q === null) return 'query is not a valid string';
    p += qlen;
    queries.push(q);
  }
  if (p !== data.length) return 'trailing data after queries';
  return { exportName, queries };
}
