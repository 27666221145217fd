import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { TainerdError } from "../errdefs.ts";
import {
  Digester,
  digestOf,
  digestStream,
  formatDigest,
  isDigest,
  parseDigest,
  validateDigest,
} from "./digest.ts";

const ABC_SHA256 = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const ABC_SHA512 = "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a" +
  "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

function isInvalidArgument(err: unknown): boolean {
  return err instanceof TainerdError && err.kind === "InvalidArgument";
}

Deno.test("parseDigest() accepts sha256 and sha512 digests", () => {
  assert.deepEqual(parseDigest(ABC_SHA256), {
    algorithm: "sha256",
    hex: ABC_SHA256.slice(7),
  });
  assert.deepEqual(parseDigest(ABC_SHA512), {
    algorithm: "sha512",
    hex: ABC_SHA512.slice(7),
  });
  assert.equal(validateDigest(ABC_SHA256), ABC_SHA256);
  assert.equal(isDigest(ABC_SHA512), true);
});

Deno.test("parseDigest() rejects malformed and hostile digests with InvalidArgument", () => {
  const hex64 = "a".repeat(64);
  const bad = [
    "",
    "sha256",
    "sha256:",
    ":" + hex64,
    hex64,
    "sha256:../../x",
    "sha256:../../" + "a".repeat(58),
    `sha256:${hex64}/..`,
    `sha256:${"a".repeat(63)}`,
    `sha256:${"a".repeat(65)}`,
    `sha256:${"A".repeat(64)}`,
    `sha256:${"g".repeat(64)}`,
    `SHA256:${hex64}`,
    `md5:${"a".repeat(32)}`,
    `sha384:${"a".repeat(96)}`,
    `sha512:${hex64}`,
    ` sha256:${hex64}`,
    `sha256:${hex64}\n`,
    `sha256:${"a".repeat(63)}\0`,
  ];
  for (const digest of bad) {
    assert.throws(
      () => parseDigest(digest),
      isInvalidArgument,
      `accepted ${JSON.stringify(digest)}`,
    );
    assert.equal(isDigest(digest), false);
  }
});

Deno.test("parseDigest() errors name the digest and the problem", () => {
  assert.throws(() => parseDigest(`md5:${"a".repeat(32)}`), /unsupported algorithm "md5"/);
  assert.throws(() => parseDigest("sha256:abc"), /needs 64 hex digits, got 3/);
  assert.throws(() => parseDigest(`sha256:${"A".repeat(64)}`), /lowercase hexadecimal/);
});

Deno.test("formatDigest() builds and validates a digest", () => {
  assert.equal(formatDigest("sha256", ABC_SHA256.slice(7)), ABC_SHA256);
  assert.throws(() => formatDigest("sha256", "zz"), isInvalidArgument);
});

Deno.test("digestOf() matches known vectors", () => {
  assert.equal(digestOf("abc"), ABC_SHA256);
  assert.equal(digestOf(new TextEncoder().encode("abc")), ABC_SHA256);
  assert.equal(digestOf("abc", "sha512"), ABC_SHA512);
});

Deno.test("Digester hashes incrementally and digest() does not disturb it", () => {
  const d = new Digester();
  d.update(new TextEncoder().encode("a"));
  assert.equal(d.digest(), digestOf("a"));
  d.update(new TextEncoder().encode("bc"));
  assert.equal(d.size, 3);
  assert.equal(d.digest(), ABC_SHA256);
  assert.equal(d.digest(), ABC_SHA256);
  d.reset();
  assert.equal(d.size, 0);
  assert.equal(d.digest(), digestOf(""));
  assert.throws(() => new Digester("md5" as "sha256"), isInvalidArgument);
});

Deno.test("Digester consumes reused buffers immediately", () => {
  const d = new Digester("sha512");
  const buf = new Uint8Array(4);
  const whole = createHash("sha512");
  for (let i = 0; i < 10; i++) {
    buf.fill(i);
    d.update(buf);
    whole.update(buf);
  }
  assert.equal(d.digest(), `sha512:${whole.digest("hex")}`);
});

Deno.test("digestStream() hashes a ReadableStream and an async iterable", async () => {
  const chunks = ["a", "b", "c"].map((s) => new TextEncoder().encode(s));
  const stream = ReadableStream.from(chunks);
  assert.deepEqual(await digestStream(stream), { digest: ABC_SHA256, size: 3 });
  async function* gen() {
    yield* chunks;
  }
  assert.deepEqual(await digestStream(gen(), "sha512"), { digest: ABC_SHA512, size: 3 });
});
