import assert from "node:assert/strict";
import { TainerdError } from "../../plugins/errdefs.ts";
import {
  familiarName,
  familiarString,
  isReference,
  parseDockerRef,
  parseExactReference,
  parseNormalizedNamed,
  parseReference,
  Reference,
} from "./reference.ts";

const HEX = "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";
const DIGEST = `sha256:${HEX}`;

function invalidWith(pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, "InvalidArgument");
    assert.match(err.message, pattern);
    return true;
  };
}

Deno.test("parseReference() normalises docker names as docker does", () => {
  const cases: [string, string, Partial<Reference>][] = [
    ["busybox", "docker.io/library/busybox:latest", {
      domain: "docker.io",
      path: "library/busybox",
      tag: "latest",
    }],
    ["busybox:1.36", "docker.io/library/busybox:1.36", { tag: "1.36" }],
    ["user/img", "docker.io/user/img:latest", { domain: "docker.io", path: "user/img" }],
    ["index.docker.io/user/img", "docker.io/user/img:latest", { domain: "docker.io" }],
    ["docker.io/busybox", "docker.io/library/busybox:latest", { path: "library/busybox" }],
    ["host:5000/img:tag", "host:5000/img:tag", { domain: "host:5000", path: "img", tag: "tag" }],
    ["registry.example.com/a/b/c", "registry.example.com/a/b/c:latest", { path: "a/b/c" }],
    ["localhost/img", "localhost/img:latest", { domain: "localhost", path: "img" }],
    ["localhost:5000/img", "localhost:5000/img:latest", { domain: "localhost:5000" }],
    ["[::1]:5000/x", "[::1]:5000/x:latest", { domain: "[::1]:5000", path: "x" }],
    ["[fe80::1]/x/y:v1", "[fe80::1]/x/y:v1", { domain: "[fe80::1]", path: "x/y" }],
    [`img@${DIGEST}`, `docker.io/library/img@${DIGEST}`, { tag: undefined, digest: DIGEST }],
    [`img:tag@${DIGEST}`, `docker.io/library/img:tag@${DIGEST}`, { tag: "tag", digest: DIGEST }],
    ["a-b.c-d/e", "a-b.c-d/e:latest", { domain: "a-b.c-d" }],
    ["user/my--img_x.y", "docker.io/user/my--img_x.y:latest", { path: "user/my--img_x.y" }],
    ["img:Tag_1.0-rc", "docker.io/library/img:Tag_1.0-rc", { tag: "Tag_1.0-rc" }],
  ];
  for (const [input, expected, parts] of cases) {
    const ref = parseReference(input);
    assert.equal(ref.toString(), expected, input);
    assert.equal(String(ref), expected);
    for (const [k, v] of Object.entries(parts)) {
      assert.equal((ref as unknown as Record<string, unknown>)[k], v, `${input}: ${k}`);
    }
    // Parsing the normalised form again is the identity.
    assert.equal(parseReference(expected).toString(), expected);
  }
});

Deno.test("parseReference() keeps the domain as given and its case", () => {
  assert.equal(parseReference("Example.COM/img").domain, "Example.COM");
  assert.equal(parseReference("127.0.0.1:5000/img").domain, "127.0.0.1:5000");
});

Deno.test("familiarName() and familiarString() shorten docker.io names", () => {
  assert.equal(familiarName("docker.io/library/busybox:latest"), "busybox");
  assert.equal(familiarName("busybox"), "busybox");
  assert.equal(familiarName("docker.io/user/img"), "user/img");
  assert.equal(familiarName("docker.io/library/a/b"), "library/a/b");
  assert.equal(familiarName("host:5000/library/busybox"), "host:5000/library/busybox");
  assert.equal(familiarString("docker.io/library/busybox:latest"), "busybox:latest");
  assert.equal(familiarString(`user/img@${DIGEST}`), `user/img@${DIGEST}`);
  const ref = parseReference("localhost/x:1");
  assert.equal(ref.familiarName(), "localhost/x");
  assert.equal(ref.familiarString(), "localhost/x:1");
});

Deno.test("parseReference() rejects an uppercase repository with a clear message", () => {
  for (const input of ["Busybox", "user/Img", "host:5000/Img:tag", "docker.io/library/BusyBox"]) {
    assert.throws(() => parseReference(input), invalidWith(/must be lowercase/), input);
  }
});

Deno.test("parseReference() rejects bad tags, naming the tag", () => {
  const long = "a".repeat(129);
  for (const tag of ["-bad", ".bad", "ba d", "ba!d", long]) {
    assert.throws(
      () => parseReference(`img:${tag}`),
      invalidWith(/invalid tag/),
      tag,
    );
  }
  assert.throws(() => parseReference("img:"), invalidWith(/invalid tag ""/));
  assert.throws(() => new Reference({ domain: "docker.io", path: "x", tag: "" }), /invalid tag/);
});

Deno.test("parseReference() rejects bad digests, naming the digest", () => {
  const cases = [
    `img@sha256:${HEX.slice(1)}`,
    `img@sha256:${HEX.toUpperCase()}`,
    `img@sha256:${"z".repeat(64)}`,
    `img@md5:${"a".repeat(32)}`,
    "img@sha256",
    "img@",
    `img:tag@sha256:${HEX}x`,
  ];
  for (const input of cases) {
    assert.throws(() => parseReference(input), invalidWith(/invalid digest/), input);
  }
});

Deno.test("parseReference() rejects other malformed references", () => {
  const cases: [string, RegExp][] = [
    ["", /empty/],
    [":tag", /at least one component|empty path component/],
    ["a_b.c/img", /invalid registry domain "a_b.c"/],
    ["/img", /empty path component|invalid/],
    ["img//x", /empty path component/],
    ["user/img_", /invalid repository path component "img_"/],
    ["user/-img", /invalid repository path component/],
    ["a..b/img/", /empty path component|invalid/],
    ["-host.com/img", /invalid registry domain/],
    [HEX, /64-character hexadecimal/],
    [`host.com/${"a".repeat(260)}`, /not be more than 255 characters/],
    ["x".repeat(5000), /longer than/],
    ["https://host/img", /invalid/],
  ];
  for (const [input, pattern] of cases) {
    assert.throws(() => parseReference(input), invalidWith(pattern), input);
  }
  assert.equal(isReference("busybox"), true);
  assert.equal(isReference("Busybox"), false);
});

Deno.test("parseDockerRef() keeps only the digest when both are given", () => {
  assert.equal(
    parseDockerRef(`busybox:latest@${DIGEST}`).toString(),
    `docker.io/library/busybox@${DIGEST}`,
  );
  assert.equal(parseDockerRef("busybox").toString(), "docker.io/library/busybox:latest");
  assert.equal(parseNormalizedNamed("busybox").toString(), "docker.io/library/busybox");
});

Deno.test("Reference exposes the containerd object and derived references", () => {
  const ref = parseReference(`host:5000/a/b:v1@${DIGEST}`);
  assert.equal(ref.name, "host:5000/a/b");
  assert.equal(ref.object, `v1@${DIGEST}`);
  assert.equal(ref.repository().toString(), "host:5000/a/b");
  assert.equal(ref.withTag("v2").toString(), `host:5000/a/b:v2@${DIGEST}`);
  assert.equal(parseReference("x").object, "latest");
  assert.equal(parseReference(`x@${DIGEST}`).object, `@${DIGEST}`);
  assert.equal(parseNormalizedNamed("x").object, "");
  assert.equal(JSON.stringify({ ref }), `{"ref":"host:5000/a/b:v1@${DIGEST}"}`);
  assert.ok(Object.isFrozen(ref));
});

Deno.test("parseExactReference() does not normalise", () => {
  const ref = parseExactReference("busybox");
  assert.equal(ref.domain, "");
  assert.equal(ref.path, "busybox");
  assert.equal(ref.tag, undefined);
  assert.equal(parseExactReference("user/img").path, "user/img");
  assert.equal(parseExactReference("host:5000/img").domain, "host:5000");
});
