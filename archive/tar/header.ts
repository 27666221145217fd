/**
 * The tar header model and the block-level codec shared by the reader and the writer:
 * 512-byte header blocks (v7, ustar, GNU, star), numeric fields (octal and GNU base-256),
 * checksums, PAX records (parsed as bytes, so binary xattr values survive) and PAX times.
 *
 * @module
 */

import { invalidArgument, notImplemented } from "../../plugins/errdefs.ts";

/** Size of a tar block: headers are one block, bodies are padded to a multiple of it. */
export const BLOCK_SIZE = 512;

/** Largest PAX extended header or GNU long name/link body accepted (as Go and libarchive). */
export const MAX_SPECIAL_FILE_SIZE = 1 << 20;

/** Type flags of tar entries. */
export const TarType = {
  /** Regular file. Old archives use NUL (`"\0"`); the reader reports `"0"` for both. */
  Regular: "0",
  /** Hard link to `linkname`, an earlier entry of the archive. */
  Hardlink: "1",
  /** Symbolic link to `linkname`. */
  Symlink: "2",
  /** Character device `devmajor:devminor`. */
  Char: "3",
  /** Block device `devmajor:devminor`. */
  Block: "4",
  /** Directory. */
  Dir: "5",
  /** Named pipe. */
  Fifo: "6",
  /** Contiguous file: a regular file on every system that matters. */
  Contiguous: "7",
  /** PAX extended header for the next entry (consumed by the reader). */
  PaxHeader: "x",
  /** PAX global extended header (consumed by the reader, applied to every later entry). */
  PaxGlobalHeader: "g",
  /** GNU long name of the next entry (consumed by the reader). */
  GnuLongName: "L",
  /** GNU long link name of the next entry (consumed by the reader). */
  GnuLongLink: "K",
} as const;

/** A tar type flag: one of {@link TarType}, or any other single character found in an archive. */
export type TarEntryType = (typeof TarType)[keyof typeof TarType] | (string & Record<never, never>);

/** A point in time with nanosecond precision: `sec` seconds (may be negative) plus `nsec`. */
export interface TarTime {
  /** Whole seconds since the Unix epoch. */
  sec: number;
  /** Nanoseconds, 0 ≤ nsec < 1e9. */
  nsec: number;
}

/** One entry's metadata, as read from or written to an archive. */
export interface TarHeader {
  /** Path of the entry inside the archive (from PAX `path`, GNU 'L', or prefix + name). */
  name: string;
  /** Type flag (see {@link TarType}). */
  type: TarEntryType;
  /** Permission bits including setuid, setgid and sticky (`mode & 0o7777`). */
  mode: number;
  /** Owner user id. */
  uid: number;
  /** Owner group id. */
  gid: number;
  /** Length of the body in bytes (header-only types such as links and dirs carry no body). */
  size: number;
  /** Modification time. */
  mtime: TarTime;
  /** Access time, when the archive records one (PAX `atime`, GNU or star fields). */
  atime?: TarTime;
  /** Status change time, when the archive records one (PAX `ctime`, GNU or star fields). */
  ctime?: TarTime;
  /** Link target, for hard links and symbolic links. */
  linkname: string;
  /** Owner user name. */
  uname: string;
  /** Owner group name. */
  gname: string;
  /** Major device number, for character and block devices. */
  devmajor: number;
  /** Minor device number, for character and block devices. */
  devminor: number;
  /** Extended attributes (PAX `SCHILY.xattr.<name>`), values as raw bytes. */
  xattrs: Map<string, Uint8Array>;
  /** PAX records that have no field above, e.g. `LIBARCHIVE.creationtime`. */
  pax: Map<string, string>;
}

/** A header to write: `name` is required, everything else has a default (see `TarWriter`). */
export type TarHeaderInit = Pick<TarHeader, "name"> & Partial<Omit<TarHeader, "name">>;

/** Converts a `Date` (millisecond precision) to a {@link TarTime}. */
export function tarTimeFromDate(date: Date): TarTime {
  const ms = date.getTime();
  const sec = Math.floor(ms / 1000);
  return { sec, nsec: (ms - sec * 1000) * 1_000_000 };
}

/** Converts a {@link TarTime} to a `Date` (sub-millisecond precision is lost). */
export function tarTimeToDate(time: TarTime): Date {
  return new Date(time.sec * 1000 + Math.floor(time.nsec / 1_000_000));
}

/** Whether entries of this type have no data section, whatever their size field says. */
export function isHeaderOnlyType(type: string): boolean {
  return type >= "1" && type <= "6" && type.length === 1;
}

// ---------------------------------------------------------------------------------------------
// Field layout (offsets into the 512-byte block)

/** Offsets and lengths of the header fields, common to all formats unless noted. */
export const Field = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  chksum: [148, 8],
  type: [156, 1],
  linkname: [157, 100],
  magic: [257, 6],
  version: [263, 2],
  uname: [265, 32],
  gname: [297, 32],
  devmajor: [329, 8],
  devminor: [337, 8],
  prefix: [345, 155],
  gnuAtime: [345, 12],
  gnuCtime: [357, 12],
  starPrefix: [345, 131],
  starAtime: [476, 12],
  starCtime: [488, 12],
  starTrailer: [508, 4],
} as const satisfies Record<string, readonly [number, number]>;

/** Name of a header field. */
export type FieldName = keyof typeof Field;

function field(block: Uint8Array, name: FieldName): Uint8Array {
  const [at, len] = Field[name];
  return block.subarray(at, at + len);
}

const utf8 = new TextDecoder("utf-8");
const encoder = new TextEncoder();

/** Decodes UTF-8 bytes to a string (invalid sequences become U+FFFD). */
export function decodeUtf8(bytes: Uint8Array): string {
  return utf8.decode(bytes);
}

/** Encodes a string as UTF-8. */
export function encodeUtf8(s: string): Uint8Array {
  return encoder.encode(s);
}

/** Decodes a NUL-terminated field (the whole field when it has no NUL) as UTF-8. */
export function parseString(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return decodeUtf8(nul >= 0 ? bytes.subarray(0, nul) : bytes);
}

function headerError(offset: number, what: string): Error {
  return invalidArgument(`Invalid tar header at offset ${offset}: ${what}`);
}

/**
 * Parses a numeric field: GNU base-256 (first byte has bit 7 set; two's complement, may be
 * negative) or octal padded with spaces and NULs. Returns `null` when the field is malformed
 * or out of the safe integer range.
 */
export function parseNumeric(bytes: Uint8Array): number | null {
  if (bytes.length > 0 && (bytes[0] & 0x80) !== 0) {
    const inv = (bytes[0] & 0x40) !== 0 ? 0xff : 0;
    let x = 0;
    for (let i = 0; i < bytes.length; i++) {
      let c = bytes[i] ^ inv;
      if (i === 0) c &= 0x7f;
      x = x * 256 + c;
      if (x > Number.MAX_SAFE_INTEGER) return null;
    }
    return inv ? -x - 1 : x;
  }
  return parseOctal(bytes);
}

function parseOctal(bytes: Uint8Array): number | null {
  let start = 0;
  let end = bytes.length;
  while (start < end && (bytes[start] === 0x20 || bytes[start] === 0)) start++;
  while (end > start && (bytes[end - 1] === 0x20 || bytes[end - 1] === 0)) end--;
  let x = 0;
  for (let i = start; i < end; i++) {
    const d = bytes[i] - 0x30;
    if (d < 0 || d > 7) return null;
    x = x * 8 + d;
  }
  return x;
}

/** Whether `x` can be written in octal in a field of `len` bytes (leaving room for a NUL). */
export function fitsOctal(len: number, x: number): boolean {
  return Number.isSafeInteger(x) && x >= 0 && x < 8 ** (len - 1);
}

/** Writes `x` as zero-padded octal followed by a NUL into `out` (the caller checks the fit). */
export function formatOctal(out: Uint8Array, x: number): void {
  const s = x.toString(8).padStart(out.length - 1, "0");
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  out[s.length] = 0;
}

/** Writes `x` in GNU base-256 (two's complement, big-endian, bit 7 of byte 0 set) into `out`. */
export function formatBase256(out: Uint8Array, x: number): void {
  let v = BigInt(x);
  for (let i = out.length - 1; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  out[0] |= 0x80;
}

/** Computes the unsigned (POSIX) and signed (old Sun tar) checksums of a header block. */
export function computeChecksums(block: Uint8Array): { unsigned: number; signed: number } {
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK_SIZE; i++) {
    const c = i >= 148 && i < 156 ? 0x20 : block[i];
    unsigned += c;
    signed += c < 0x80 ? c : c - 256;
  }
  return { unsigned, signed };
}

/** Writes the checksum field of a header block whose other fields are final. */
export function writeChecksum(block: Uint8Array): void {
  const { unsigned } = computeChecksums(block);
  const f = field(block, "chksum");
  formatOctal(f.subarray(0, 7), unsigned);
  f[7] = 0x20;
}

/** Whether every byte of the block is zero. */
export function isZeroBlock(block: Uint8Array): boolean {
  for (let i = 0; i < block.length; i++) if (block[i] !== 0) return false;
  return true;
}

/** The header layouts the reader distinguishes by their magic. */
export type TarFormat = "v7" | "ustar" | "gnu" | "star";

function bytesEqual(a: Uint8Array, s: string): boolean {
  if (a.length !== s.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== s.charCodeAt(i)) return false;
  return true;
}

/** Detects the layout of a header block from its magic and version fields. */
export function detectFormat(block: Uint8Array): TarFormat {
  const magic = field(block, "magic");
  if (bytesEqual(magic, "ustar\0")) {
    return bytesEqual(field(block, "starTrailer"), "tar\0") ? "star" : "ustar";
  }
  if (bytesEqual(magic, "ustar ") && bytesEqual(field(block, "version"), " \0")) return "gnu";
  return "v7";
}

/**
 * Parses one 512-byte header block: verifies the checksum, detects the format and decodes
 * every field. `offset` (the block's position in the archive) is used in error messages.
 * The type flag is returned raw (a NUL type stays `"\0"`).
 */
export function parseHeaderBlock(block: Uint8Array, offset: number): TarHeader {
  const stored = parseOctal(field(block, "chksum"));
  const { unsigned, signed } = computeChecksums(block);
  if (stored === null || (stored !== unsigned && stored !== signed)) {
    throw headerError(offset, "bad checksum");
  }
  const format = detectFormat(block);
  const num = (name: FieldName): number => {
    const v = parseNumeric(field(block, name));
    if (v === null) throw headerError(offset, `bad ${name} field`);
    return v;
  };
  const size = num("size");
  if (size < 0) throw headerError(offset, `negative size ${size}`);
  const uid = num("uid");
  const gid = num("gid");
  if (uid < 0 || gid < 0) throw headerError(offset, "negative uid or gid");
  const header: TarHeader = {
    name: parseString(field(block, "name")),
    type: String.fromCharCode(block[Field.type[0]]),
    mode: num("mode") & 0o7777,
    uid,
    gid,
    size,
    mtime: { sec: num("mtime"), nsec: 0 },
    linkname: parseString(field(block, "linkname")),
    uname: "",
    gname: "",
    devmajor: 0,
    devminor: 0,
    xattrs: new Map(),
    pax: new Map(),
  };
  if (format === "v7") return header;

  header.uname = parseString(field(block, "uname"));
  header.gname = parseString(field(block, "gname"));
  header.devmajor = num("devmajor");
  header.devminor = num("devminor");
  let prefix = "";
  if (format === "ustar") {
    prefix = parseString(field(block, "prefix"));
  } else if (format === "star") {
    prefix = parseString(field(block, "starPrefix"));
    header.atime = { sec: num("starAtime"), nsec: 0 };
    header.ctime = { sec: num("starCtime"), nsec: 0 };
  } else {
    // GNU: atime and ctime are only set by incremental dumps; empty fields mean "absent".
    if (block[Field.gnuAtime[0]] !== 0) header.atime = { sec: num("gnuAtime"), nsec: 0 };
    if (block[Field.gnuCtime[0]] !== 0) header.ctime = { sec: num("gnuCtime"), nsec: 0 };
  }
  if (prefix !== "") header.name = `${prefix}/${header.name}`;
  return header;
}

// ---------------------------------------------------------------------------------------------
// PAX records

/** PAX keyword prefix of extended attributes, as GNU tar, star, Go and containerd write them. */
export const PAX_XATTR_PREFIX = "SCHILY.xattr.";
/** PAX keyword prefix of extended attributes written by libarchive (base64 values). */
export const PAX_LIBARCHIVE_XATTR_PREFIX = "LIBARCHIVE.xattr.";

/**
 * Parses the body of a PAX extended header into records, in order. Records are
 * `"<len> <key>=<value>\n"` where `<len>` counts the whole record in bytes; values are kept as
 * raw bytes (copied out of `data`). `offset` (the extended header's position) is used in
 * error messages.
 */
export function parsePaxRecords(data: Uint8Array, offset: number): Map<string, Uint8Array> {
  const records = new Map<string, Uint8Array>();
  let pos = 0;
  while (pos < data.length) {
    const bad = (why: string) => headerError(offset, `bad PAX record at byte ${pos}: ${why}`);
    let i = pos;
    let len = 0;
    while (i < data.length && data[i] >= 0x30 && data[i] <= 0x39 && i - pos < 16) {
      len = len * 10 + (data[i] - 0x30);
      i++;
    }
    if (i === pos || i >= data.length || data[i] !== 0x20) throw bad("no length");
    if (len < 5 || pos + len > data.length) {
      throw bad(`length ${len} does not fit the ${data.length - pos} remaining bytes`);
    }
    const end = pos + len;
    if (data[end - 1] !== 0x0a) throw bad(`length ${len} does not end at a newline`);
    const rec = data.subarray(i + 1, end - 1);
    const eq = rec.indexOf(0x3d);
    if (eq <= 0) throw bad("no key");
    const keyBytes = rec.subarray(0, eq);
    if (keyBytes.indexOf(0) >= 0) throw bad("NUL in key");
    const key = decodeUtf8(keyBytes);
    const value = rec.slice(eq + 1);
    if (
      (key === "path" || key === "linkpath" || key === "uname" || key === "gname") &&
      value.indexOf(0) >= 0
    ) {
      throw bad(`NUL in ${key}`);
    }
    records.set(key, value);
    pos = end;
  }
  return records;
}

/** Formats one PAX record; `value` is raw bytes. */
export function formatPaxRecord(key: string, value: Uint8Array): Uint8Array {
  const k = encodeUtf8(key);
  const base = k.length + value.length + 3; // ' ', '=', '\n'
  let size = base + String(base).length;
  // Adding the length's own digits may carry it over to one more digit.
  if (String(size).length !== String(base).length) size = base + String(size).length;
  const prefix = encodeUtf8(`${size} `);
  const out = new Uint8Array(size);
  out.set(prefix, 0);
  out.set(k, prefix.length);
  out[prefix.length + k.length] = 0x3d;
  out.set(value, prefix.length + k.length + 1);
  out[size - 1] = 0x0a;
  return out;
}

/**
 * Parses a PAX time, `[-]<seconds>[.<fraction>]`; digits beyond nanoseconds are dropped.
 * Returns `null` when malformed.
 */
export function parsePaxTime(s: string): TarTime | null {
  const m = /^([+-]?)(\d+)(?:\.(\d*))?$/.exec(s);
  if (!m) return null;
  const whole = Number(m[2]);
  if (!Number.isSafeInteger(whole)) return null;
  const nsec = Number((m[3] ?? "").slice(0, 9).padEnd(9, "0"));
  if (m[1] !== "-") return { sec: whole, nsec };
  return nsec === 0 ? { sec: -whole, nsec: 0 } : { sec: -whole - 1, nsec: 1e9 - nsec };
}

/** Formats a PAX time; the fraction is written only when `nsec` is not zero. */
export function formatPaxTime(t: TarTime): string {
  if (t.nsec === 0) return String(t.sec);
  let sign = "";
  let sec = t.sec;
  let nsec = t.nsec;
  if (sec < 0) {
    sign = "-";
    sec = -(sec + 1);
    nsec = 1e9 - nsec;
  }
  return `${sign}${sec}.${String(nsec).padStart(9, "0").replace(/0+$/, "")}`;
}

function parsePaxInteger(key: string, value: string, offset: number): number {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw headerError(offset, `bad PAX ${key} "${value}"`);
  }
  return Number(value);
}

function decodeBase64(s: string): Uint8Array | null {
  try {
    const bin = atob(s.replace(/-/g, "+").replace(/_/g, "/"));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}

/**
 * Applies PAX records (global ones first, then the entry's own) to a parsed header: `path`,
 * `linkpath`, `size`, `uid`, `gid`, `uname`, `gname`, `mtime`, `atime`, `ctime`,
 * `SCHILY.xattr.*`, `LIBARCHIVE.xattr.*` (when no SCHILY record names the same attribute),
 * `SCHILY.devmajor`/`devminor`; every other record lands in `header.pax`. An empty value
 * keeps the header block's value (POSIX: it deletes the extended value), except for xattrs,
 * whose value may legitimately be empty. GNU sparse records are refused (not implemented).
 */
export function applyPaxRecords(
  header: TarHeader,
  records: Map<string, Uint8Array>,
  offset: number,
): void {
  const libarchiveXattrs = new Map<string, Uint8Array>();
  for (const [key, raw] of records) {
    if (key.startsWith(PAX_XATTR_PREFIX)) {
      header.xattrs.set(key.slice(PAX_XATTR_PREFIX.length), raw);
      continue;
    }
    if (key.startsWith(PAX_LIBARCHIVE_XATTR_PREFIX)) {
      const name = decodeURIComponentSafe(key.slice(PAX_LIBARCHIVE_XATTR_PREFIX.length));
      const value = decodeBase64(decodeUtf8(raw));
      if (name === null || value === null) {
        throw headerError(offset, `bad PAX record ${key}`);
      }
      libarchiveXattrs.set(name, value);
      continue;
    }
    if (key.startsWith("GNU.sparse.")) {
      throw notImplemented(
        `Cannot read tar entry at offset ${offset}: GNU sparse files are not supported`,
      );
    }
    const value = decodeUtf8(raw);
    if (value === "") continue;
    switch (key) {
      case "path":
        header.name = value;
        break;
      case "linkpath":
        header.linkname = value;
        break;
      case "uname":
        header.uname = value;
        break;
      case "gname":
        header.gname = value;
        break;
      case "uid":
        header.uid = parsePaxInteger(key, value, offset);
        break;
      case "gid":
        header.gid = parsePaxInteger(key, value, offset);
        break;
      case "size":
        header.size = parsePaxInteger(key, value, offset);
        break;
      case "SCHILY.devmajor":
        header.devmajor = parsePaxInteger(key, value, offset);
        break;
      case "SCHILY.devminor":
        header.devminor = parsePaxInteger(key, value, offset);
        break;
      case "mtime":
      case "atime":
      case "ctime": {
        const t = parsePaxTime(value);
        if (t === null) throw headerError(offset, `bad PAX ${key} "${value}"`);
        header[key] = t;
        break;
      }
      default:
        header.pax.set(key, value);
    }
  }
  for (const [name, value] of libarchiveXattrs) {
    if (!header.xattrs.has(name)) header.xattrs.set(name, value);
  }
}

function decodeURIComponentSafe(s: string): string | null {
  try {
    return decodeURIComponent(s);
  } catch {
    return null;
  }
}
