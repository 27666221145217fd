import assert from "node:assert/strict";
import {
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  metadataFromKeyValues,
  metadataToKeyValues,
  type Request,
} from "./messages.ts";

Deno.test("encodeRequest() writes the ttrpc.Request fields in order", () => {
  const bytes = encodeRequest({
    service: "s",
    method: "m",
    payload: new Uint8Array([1, 2]),
    timeoutNano: 300n,
    metadata: [{ key: "k", value: "v" }],
  });
  assert.deepEqual(
    [...bytes],
    [
      0x0a,
      1,
      0x73, // service = "s"
      0x12,
      1,
      0x6d, // method = "m"
      0x1a,
      2,
      1,
      2, // payload
      0x20,
      0xac,
      0x02, // timeout_nano = 300
      0x2a,
      6,
      0x0a,
      1,
      0x6b,
      0x12,
      1,
      0x76, // metadata {k, v}
    ],
  );
});

Deno.test("decodeRequest() round-trips encodeRequest() and skips unknown fields", () => {
  const req: Request = {
    service: "containerd.task.v2.Task",
    method: "Create",
    payload: new Uint8Array([8, 1, 0x12, 0]),
    timeoutNano: 10_000_000_000n,
    metadata: [{ key: "a", value: "1" }, { key: "a", value: "2" }, { key: "b", value: "" }],
  };
  const extra = new Uint8Array([0x78, 5, 0x82, 0x01, 2, 0xff, 0xff]); // field 15 varint, 16 bytes
  const bytes = new Uint8Array([...encodeRequest(req), ...extra]);
  assert.deepEqual(decodeRequest(bytes), req);
  assert.deepEqual(decodeRequest(new Uint8Array()), {
    service: "",
    method: "",
    payload: new Uint8Array(),
    timeoutNano: 0n,
    metadata: [],
  });
});

Deno.test("encodeResponse() always writes a status, and decodeResponse() reads it back", () => {
  const ok = encodeResponse({ payload: new Uint8Array([7]) });
  assert.deepEqual([...ok], [0x0a, 0, 0x12, 1, 7]);
  assert.deepEqual(decodeResponse(ok), {
    status: { code: 0, message: "", details: [] },
    payload: new Uint8Array([7]),
  });
  const status = {
    code: 5,
    message: "not found",
    details: [{ typeUrl: "type.googleapis.com/x", value: new Uint8Array([1]) }],
  };
  assert.deepEqual(decodeResponse(encodeResponse({ status, payload: new Uint8Array() })), {
    status,
    payload: new Uint8Array(),
  });
});

Deno.test("decodeRequest() throws on a truncated message", () => {
  assert.throws(() => decodeRequest(new Uint8Array([0x0a, 5, 1])));
});

Deno.test("metadataFromKeyValues() groups repeated keys; metadataToKeyValues() flattens", () => {
  const md = metadataFromKeyValues([
    { key: "a", value: "1" },
    { key: "b", value: "x" },
    { key: "a", value: "2" },
  ]);
  assert.deepEqual({ ...md }, { a: ["1", "2"], b: ["x"] });
  assert.deepEqual(metadataToKeyValues({ a: "0", b: "y" }, undefined, { a: ["1", "2"] }), [
    { key: "a", value: "1" },
    { key: "a", value: "2" },
    { key: "b", value: "y" },
  ]);
});
