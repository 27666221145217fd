/**
 * The ttrpc envelope messages, encoded by hand (they never change):
 *
 * ```proto
 * message Request  { string service = 1; string method = 2; bytes payload = 3;
 *                    int64 timeout_nano = 4; repeated KeyValue metadata = 5; }
 * message KeyValue { string key = 1; string value = 2; }
 * message Response { google.rpc.Status status = 1; bytes payload = 2; }
 * // google.rpc.Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
 * // google.protobuf.Any { string type_url = 1; bytes value = 2; }
 * ```
 *
 * @module
 */

import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";

/** One metadata entry (`ttrpc.KeyValue`). */
export interface KeyValue {
  /** The key. */
  key: string;
  /** The value. */
  value: string;
}

/** A `ttrpc.Request`: which method to call, with what, by when. */
export interface Request {
  /** Fully qualified service name, e.g. `containerd.task.v2.Task`. */
  service: string;
  /** Method name as in the proto, e.g. `Create`. */
  method: string;
  /** The encoded request message. */
  payload: Uint8Array;
  /** Time the caller will wait, in nanoseconds; 0 for none. */
  timeoutNano: bigint;
  /** Request metadata; a key may repeat. */
  metadata: KeyValue[];
}

/** A `google.protobuf.Any`, kept opaque. */
export interface AnyMessage {
  /** The type URL, e.g. `type.googleapis.com/google.rpc.ErrorInfo`. */
  typeUrl: string;
  /** The encoded message. */
  value: Uint8Array;
}

/** A `google.rpc.Status`. */
export interface Status {
  /** A gRPC code; 0 is OK. */
  code: number;
  /** The error message. */
  message: string;
  /** Error details, opaque. */
  details: AnyMessage[];
}

/** A `ttrpc.Response`: the status and, on success, the encoded response message. */
export interface Response {
  /** The call's status; absent means OK. */
  status?: Status;
  /** The encoded response message. */
  payload: Uint8Array;
}

function writeKeyValue(w: BinaryWriter, kv: KeyValue): void {
  if (kv.key !== "") w.tag(1, WireType.LengthDelimited).string(kv.key);
  if (kv.value !== "") w.tag(2, WireType.LengthDelimited).string(kv.value);
}

function writeStatus(w: BinaryWriter, st: Status): void {
  if (st.code !== 0) w.tag(1, WireType.Varint).int32(st.code);
  if (st.message !== "") w.tag(2, WireType.LengthDelimited).string(st.message);
  for (const d of st.details) {
    w.tag(3, WireType.LengthDelimited).fork();
    if (d.typeUrl !== "") w.tag(1, WireType.LengthDelimited).string(d.typeUrl);
    if (d.value.length > 0) w.tag(2, WireType.LengthDelimited).bytes(d.value);
    w.join();
  }
}

/** Encodes a `ttrpc.Request`. */
export function encodeRequest(req: Request): Uint8Array {
  const w = new BinaryWriter();
  if (req.service !== "") w.tag(1, WireType.LengthDelimited).string(req.service);
  if (req.method !== "") w.tag(2, WireType.LengthDelimited).string(req.method);
  if (req.payload.length > 0) w.tag(3, WireType.LengthDelimited).bytes(req.payload);
  if (req.timeoutNano !== 0n) w.tag(4, WireType.Varint).int64(req.timeoutNano);
  for (const kv of req.metadata) {
    w.tag(5, WireType.LengthDelimited).fork();
    writeKeyValue(w, kv);
    w.join();
  }
  return w.finish();
}

/** Encodes a `ttrpc.Response`. The status is always written (Go's server does the same). */
export function encodeResponse(resp: Response): Uint8Array {
  const w = new BinaryWriter();
  w.tag(1, WireType.LengthDelimited).fork();
  writeStatus(w, resp.status ?? { code: 0, message: "", details: [] });
  w.join();
  if (resp.payload.length > 0) w.tag(2, WireType.LengthDelimited).bytes(resp.payload);
  return w.finish();
}

/** Calls `field` for each field of the message in `bytes`; unhandled fields are skipped. */
function readFields(
  bytes: Uint8Array,
  field: (r: BinaryReader, no: number, wt: WireType) => boolean,
): void {
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (!field(r, no, wt)) r.skip(wt, no);
  }
}

function readKeyValue(bytes: Uint8Array): KeyValue {
  const kv: KeyValue = { key: "", value: "" };
  readFields(bytes, (r, no, wt) => {
    if (wt !== WireType.LengthDelimited) return false;
    if (no === 1) kv.key = r.string();
    else if (no === 2) kv.value = r.string();
    else return false;
    return true;
  });
  return kv;
}

function readAny(bytes: Uint8Array): AnyMessage {
  const any: AnyMessage = { typeUrl: "", value: new Uint8Array() };
  readFields(bytes, (r, no, wt) => {
    if (wt !== WireType.LengthDelimited) return false;
    if (no === 1) any.typeUrl = r.string();
    else if (no === 2) any.value = r.bytes();
    else return false;
    return true;
  });
  return any;
}

function readStatus(bytes: Uint8Array): Status {
  const st: Status = { code: 0, message: "", details: [] };
  readFields(bytes, (r, no, wt) => {
    if (no === 1 && wt === WireType.Varint) st.code = r.int32();
    else if (no === 2 && wt === WireType.LengthDelimited) st.message = r.string();
    else if (no === 3 && wt === WireType.LengthDelimited) st.details.push(readAny(r.bytes()));
    else return false;
    return true;
  });
  return st;
}

/**
 * Decodes a `ttrpc.Request`.
 *
 * @throws {Error} if the bytes are not a valid protobuf message
 */
export function decodeRequest(bytes: Uint8Array): Request {
  const req: Request = {
    service: "",
    method: "",
    payload: new Uint8Array(),
    timeoutNano: 0n,
    metadata: [],
  };
  readFields(bytes, (r, no, wt) => {
    if (no === 4 && wt === WireType.Varint) {
      req.timeoutNano = BigInt(r.int64());
      return true;
    }
    if (wt !== WireType.LengthDelimited) return false;
    if (no === 1) req.service = r.string();
    else if (no === 2) req.method = r.string();
    else if (no === 3) req.payload = r.bytes();
    else if (no === 5) req.metadata.push(readKeyValue(r.bytes()));
    else return false;
    return true;
  });
  return req;
}

/**
 * Decodes a `ttrpc.Response`.
 *
 * @throws {Error} if the bytes are not a valid protobuf message
 */
export function decodeResponse(bytes: Uint8Array): Response {
  const resp: Response = { payload: new Uint8Array() };
  readFields(bytes, (r, no, wt) => {
    if (wt !== WireType.LengthDelimited) return false;
    if (no === 1) resp.status = readStatus(r.bytes());
    else if (no === 2) resp.payload = r.bytes();
    else return false;
    return true;
  });
  return resp;
}

/** Request metadata as handlers see it: every value of each key, in arrival order. */
export type Metadata = Record<string, string[]>;

/** Metadata as callers give it: one value or several per key. */
export type MetadataInit = Record<string, string | readonly string[]>;

/** Groups wire key/value pairs by key (as Go's `MD.fromRequest`). */
export function metadataFromKeyValues(pairs: readonly KeyValue[]): Metadata {
  const md: Metadata = Object.create(null);
  for (const { key, value } of pairs) (md[key] ??= []).push(value);
  return md;
}

/** Flattens metadata into wire key/value pairs (as Go's `MD.setRequest`). */
export function metadataToKeyValues(...sources: (MetadataInit | undefined)[]): KeyValue[] {
  const merged = new Map<string, readonly string[]>();
  for (const md of sources) {
    if (!md) continue;
    for (const [key, v] of Object.entries(md)) merged.set(key, typeof v === "string" ? [v] : v);
  }
  const pairs: KeyValue[] = [];
  for (const [key, values] of merged) for (const value of values) pairs.push({ key, value });
  return pairs;
}
