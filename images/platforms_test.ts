import assert from "node:assert/strict";
import {
  allPlatforms,
  anyPlatform,
  formatPlatform,
  hostPlatform,
  normalizePlatform,
  onlyPlatform,
  onlyStrictPlatform,
  parsePlatform,
  platformMatcherFor,
} from "./platforms.ts";
import { isKind } from "../plugins/errdefs.ts";

Deno.test("parsePlatform() reads os/arch/variant, a bare OS or a bare architecture", () => {
  assert.deepEqual(parsePlatform("linux/amd64"), { os: "linux", architecture: "amd64" });
  assert.deepEqual(parsePlatform("linux/x86_64"), { os: "linux", architecture: "amd64" });
  assert.deepEqual(parsePlatform("linux/aarch64"), { os: "linux", architecture: "arm64" });
  assert.deepEqual(parsePlatform("linux/arm64/v8"), {
    os: "linux",
    architecture: "arm64",
    variant: "v8",
  });
  assert.deepEqual(parsePlatform("linux/arm"), { os: "linux", architecture: "arm" });
  assert.deepEqual(parsePlatform("linux/arm/7"), {
    os: "linux",
    architecture: "arm",
    variant: "v7",
  });
  assert.deepEqual(parsePlatform("Linux/AMD64"), { os: "linux", architecture: "amd64" });
  assert.deepEqual(parsePlatform("linux"), {
    os: "linux",
    architecture: hostPlatform().architecture,
  });
  assert.deepEqual(parsePlatform("arm64"), { os: hostPlatform().os, architecture: "arm64" });
  for (const bad of ["", "linux/", "a/b/c/d", "linux/*", "nonsense", "linux/amd 64"]) {
    assert.throws(() => parsePlatform(bad), (e: Error) => isKind(e, "InvalidArgument"), bad);
  }
});

Deno.test("normalizePlatform() matches containerd's aliases and default variants", () => {
  assert.deepEqual(normalizePlatform({ os: "linux", architecture: "arm64", variant: "v8" }), {
    os: "linux",
    architecture: "arm64",
  });
  assert.deepEqual(normalizePlatform({ os: "linux", architecture: "armhf" }), {
    os: "linux",
    architecture: "arm",
    variant: "v7",
  });
  assert.deepEqual(normalizePlatform({ os: "linux", architecture: "i386" }), {
    os: "linux",
    architecture: "386",
  });
});

Deno.test("onlyPlatform() accepts what runs on a platform, preferring the exact one", () => {
  const arm64 = onlyPlatform({ os: "linux", architecture: "arm64" });
  assert.ok(arm64.match({ os: "linux", architecture: "arm64", variant: "v8" }));
  assert.ok(arm64.match({ os: "linux", architecture: "arm", variant: "v7" }));
  assert.ok(!arm64.match({ os: "linux", architecture: "amd64" }));
  assert.ok(!arm64.match({ os: "windows", architecture: "arm64" }));
  assert.ok(
    arm64.less({ os: "linux", architecture: "arm64" }, {
      os: "linux",
      architecture: "arm",
      variant: "v7",
    }),
  );
  const amd64 = onlyPlatform({ os: "linux", architecture: "amd64" });
  assert.ok(amd64.match({ os: "linux", architecture: "386" }));
  assert.ok(
    amd64.less({ os: "linux", architecture: "amd64" }, { os: "linux", architecture: "386" }),
  );
  const strict = onlyStrictPlatform({ os: "linux", architecture: "amd64" });
  assert.ok(!strict.match({ os: "linux", architecture: "386" }));
});

Deno.test("platformMatcherFor() builds host, given, several or all-platform matchers", () => {
  assert.ok(platformMatcherFor({}).match(hostPlatform()));
  assert.ok(platformMatcherFor({ allPlatforms: true }) === allPlatforms);
  const two = platformMatcherFor({ platform: ["linux/s390x", "linux/ppc64le"] });
  assert.ok(two.match({ os: "linux", architecture: "ppc64le" }));
  assert.ok(
    two.less({ os: "linux", architecture: "s390x" }, { os: "linux", architecture: "ppc64le" }),
  );
  const any = anyPlatform({ os: "linux", architecture: "riscv64" });
  assert.equal(any.description, "linux/riscv64");
  assert.equal(formatPlatform({ os: "linux", architecture: "arm", variant: "v6" }), "linux/arm/v6");
});
