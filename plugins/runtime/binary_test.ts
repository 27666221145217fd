import assert from "node:assert/strict";
import { isKind } from "../errdefs.ts";
import {
  defaultRuntimeConfig,
  parseRuntimeConfig,
  resolveShimBinary,
  shimBinaryName,
} from "./binary.ts";

Deno.test("shimBinaryName() maps a runtime name as containerd's BinaryName", () => {
  assert.equal(shimBinaryName("io.containerd.runc.v2"), "containerd-shim-runc-v2");
  assert.equal(shimBinaryName("io.containerd.tainerd.v2"), "containerd-shim-tainerd-v2");
  assert.equal(shimBinaryName("runc"), "");
});

Deno.test("resolveShimBinary() keeps the runc runtimes on tainerd's shim by default", () => {
  const config = defaultRuntimeConfig();
  assert.equal(resolveShimBinary("io.containerd.runc.v2", config), null);
  assert.equal(resolveShimBinary("io.containerd.runc.v1", config), null);
});

Deno.test("resolveShimBinary() finds configured shims, absolute paths and PATH names", async () => {
  const dir = await Deno.makeTempDir();
  const oldPath = Deno.env.get("PATH");
  try {
    await Deno.writeTextFile(`${dir}/containerd-shim-fake-v1`, "#!/bin/sh\n", { mode: 0o755 });
    await Deno.writeTextFile(`${dir}/my-shim`, "#!/bin/sh\n", { mode: 0o755 });
    await Deno.writeTextFile(`${dir}/not-exec`, "", { mode: 0o644 });
    Deno.env.set("PATH", `${dir}:/nonexistent`);
    const config = parseRuntimeConfig(
      { shims: { "io.containerd.runc.v2": "my-shim", "io.containerd.x.v1": `${dir}/my-shim` } },
      defaultRuntimeConfig(),
      'plugins."io.containerd.runtime.v2.task"',
    );
    assert.equal(resolveShimBinary("io.containerd.runc.v2", config), `${dir}/my-shim`);
    assert.equal(resolveShimBinary("io.containerd.x.v1", config), `${dir}/my-shim`);
    assert.equal(resolveShimBinary("io.containerd.runc.v1", config), null);
    assert.equal(
      resolveShimBinary("io.containerd.fake.v1", config),
      `${dir}/containerd-shim-fake-v1`,
    );
    assert.equal(resolveShimBinary(`${dir}/my-shim`, config), `${dir}/my-shim`);
    assert.throws(
      () => resolveShimBinary("io.containerd.missing.v1", config),
      (e: unknown) => isKind(e, "NotFound"),
    );
    assert.throws(
      () => resolveShimBinary(`${dir}/not-exec`, config),
      (e: unknown) => isKind(e, "NotFound"),
    );
    assert.throws(
      () => resolveShimBinary("runc", config),
      (e: unknown) => isKind(e, "InvalidArgument"),
    );
  } finally {
    if (oldPath === undefined) Deno.env.delete("PATH");
    else Deno.env.set("PATH", oldPath);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseRuntimeConfig() rejects unknown keys and non-string shims", () => {
  const where = 'plugins."io.containerd.runtime.v2.task"';
  assert.throws(
    () => parseRuntimeConfig({ other: 1 }, defaultRuntimeConfig(), where),
    (e: unknown) => isKind(e, "InvalidArgument"),
  );
  assert.throws(
    () => parseRuntimeConfig({ shims: { a: 1 } }, defaultRuntimeConfig(), where),
    (e: unknown) => isKind(e, "InvalidArgument"),
  );
  assert.throws(
    () => parseRuntimeConfig({ shims: "x" }, defaultRuntimeConfig(), where),
    (e: unknown) => isKind(e, "InvalidArgument"),
  );
});
