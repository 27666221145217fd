import assert from "node:assert/strict";
import { HpackDecoder, hpackEncode, HpackError, huffmanDecode, huffmanEncode } from "./hpack.ts";

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, "");
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

Deno.test("hpack: RFC 7541 C.3, requests without Huffman, one dynamic table", () => {
  const d = new HpackDecoder();
  assert.deepEqual(d.decode(hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d")), [
    [":method", "GET"],
    [":scheme", "http"],
    [":path", "/"],
    [":authority", "www.example.com"],
  ]);
  assert.deepEqual(d.decode(hex("8286 84be 5808 6e6f 2d63 6163 6865")), [
    [":method", "GET"],
    [":scheme", "http"],
    [":path", "/"],
    [":authority", "www.example.com"],
    ["cache-control", "no-cache"],
  ]);
  assert.deepEqual(
    d.decode(hex(
      "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    )),
    [
      [":method", "GET"],
      [":scheme", "https"],
      [":path", "/index.html"],
      [":authority", "www.example.com"],
      ["custom-key", "custom-value"],
    ],
  );
});

Deno.test("hpack: RFC 7541 C.4, requests with Huffman", () => {
  const d = new HpackDecoder();
  assert.deepEqual(d.decode(hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")), [
    [":method", "GET"],
    [":scheme", "http"],
    [":path", "/"],
    [":authority", "www.example.com"],
  ]);
  assert.deepEqual(d.decode(hex("8286 84be 5886 a8eb 1064 9cbf")), [
    [":method", "GET"],
    [":scheme", "http"],
    [":path", "/"],
    [":authority", "www.example.com"],
    ["cache-control", "no-cache"],
  ]);
  assert.deepEqual(
    d.decode(hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf")),
    [
      [":method", "GET"],
      [":scheme", "https"],
      [":path", "/index.html"],
      [":authority", "www.example.com"],
      ["custom-key", "custom-value"],
    ],
  );
});

Deno.test("hpack: Huffman round trip of every octet; bad padding and EOS refused", () => {
  let all = "";
  for (let i = 0; i < 256; i++) all += String.fromCharCode(i);
  assert.deepEqual(huffmanDecode(huffmanEncode(all)), all);
  assert.deepEqual(huffmanDecode(huffmanEncode("application/grpc")), "application/grpc");
  // "www.example.com" from RFC 7541 C.4.1.
  assert.deepEqual(huffmanEncode("www.example.com"), hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"));
  // Padding of zeros, padding longer than 7 bits, and an EOS symbol are decoding errors.
  assert.throws(() => huffmanDecode(hex("f1e3 c2e5 f23a 6ba0 ab90 f400")), HpackError);
  assert.throws(() => huffmanDecode(hex("ffff ffff")), HpackError);
  assert.throws(() => huffmanDecode(hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff ff")), HpackError);
});

Deno.test("hpack: malformed blocks are refused", () => {
  // Index 0; an index beyond both tables; a truncated string; a size update over the limit;
  // a size update after a field.
  for (const block of ["80", "be", "4005 6162", "3fe2 1f", "82 20"]) {
    assert.throws(() => new HpackDecoder().decode(hex(block)), HpackError, block);
  }
  // A list larger than allowed.
  const big = hpackEncode([["x-big", "v".repeat(2000)]]);
  assert.throws(() => new HpackDecoder(4096, 1000).decode(big), HpackError);
});

Deno.test("hpack: the encoder's blocks decode to what went in, the table evicts by size", () => {
  const list: [string, string][] = [
    [":status", "200"],
    [":status", "418"],
    ["content-type", "application/grpc"],
    ["grpc-status", "0"],
    ["grpc-message", "x".repeat(300)],
    ["x-latin1", "caf\u00e9"],
  ];
  assert.deepEqual(new HpackDecoder().decode(hpackEncode(list)), list);
  // Indexed literals beyond a 64-octet table push older entries out.
  const d = new HpackDecoder(64);
  const lit = (name: string, value: string) =>
    new Uint8Array([
      0x40,
      name.length,
      ...new TextEncoder().encode(name),
      value.length,
      ...new TextEncoder().encode(value),
    ]);
  d.decode(lit("a", "1")); // 34 octets
  d.decode(lit("b", "2")); // 68 > 64: "a" goes
  assert.deepEqual(d.decode(hex("be")), [["b", "2"]]);
  assert.throws(() => d.decode(hex("bf")), HpackError);
});
