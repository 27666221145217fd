import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { sha256Hex } from "./sha256.ts";

Deno.test("sha256: FIPS 180-4 examples and node:crypto agree, across block boundaries", () => {
  assert.equal(
    sha256Hex("abc"),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  assert.equal(
    sha256Hex(""),
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
  );
  assert.equal(
    sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
  );
  const data = crypto.getRandomValues(new Uint8Array(1000));
  for (let n = 0; n <= 200; n++) {
    const part = data.subarray(0, n);
    assert.equal(sha256Hex(part), createHash("sha256").update(part).digest("hex"), `${n} bytes`);
  }
  assert.equal(
    sha256Hex("/run/tainerd/tainerd.sock/default/caf\u00e9"),
    createHash("sha256").update("/run/tainerd/tainerd.sock/default/caf\u00e9").digest("hex"),
  );
});
