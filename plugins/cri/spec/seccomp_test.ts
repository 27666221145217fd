/**
 * Tests of the CRI seccomp profiles: the default profile's shape and conditional rules, the
 * choice by SecurityProfile and legacy path, Localhost files, and real runs with runc showing
 * the default profile refusing what containerd's refuses.
 *
 * @module
 */

import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import {
  SecurityProfile_ProfileType as Type,
  SecurityProfileSchema,
} from "../../../api/gen/runtime/v1/api_pb.ts";
import { isKind } from "../../errdefs.ts";
import { DEFAULT_CAPABILITIES, defaultSeccompProfile, seccompFor } from "./seccomp.ts";
import { containerSpec } from "./spec.ts";
import { canRunc, ctrConfig, podConfig, runSpec, sandboxFiles, withTempDir } from "./test_util.ts";

const profile = (profileType: Type, localhostRef = "") =>
  create(SecurityProfileSchema, { profileType, localhostRef });

const allowed = (p: ReturnType<typeof defaultSeccompProfile>, name: string) =>
  p.syscalls!.filter((s) => s.names.includes(name));

Deno.test("default profile: EPERM by default, allow list, arch map, clone rules", () => {
  const p = defaultSeccompProfile(DEFAULT_CAPABILITIES, "x86_64");
  assert.equal(p.defaultAction, "SCMP_ACT_ERRNO");
  assert.equal(p.defaultErrnoRet, 1);
  assert.deepEqual(p.architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
  const first = p.syscalls![0];
  assert.equal(first.action, "SCMP_ACT_ALLOW");
  assert.equal(first.names.length, 349);
  for (const n of ["read", "openat", "execve", "io_uring_setup"]) {
    assert.ok(first.names.includes(n), n);
  }
  for (const n of ["unshare", "mount", "setns", "keyctl", "add_key", "reboot", "bpf", "chroot"]) {
    assert.equal(allowed(p, n).length, n === "chroot" ? 1 : 0, n); // CAP_SYS_CHROOT is default
  }
  assert.deepEqual(allowed(p, "arch_prctl")[0].names, ["arch_prctl", "modify_ldt"]);
  assert.equal(allowed(p, "personality").length, 5);
  // Without CAP_SYS_ADMIN: clone without namespace flags only; clone3 ENOSYS.
  const clone = allowed(p, "clone");
  assert.deepEqual(clone[0].args, [{
    index: 0,
    value: 0x7e020000,
    valueTwo: 0,
    op: "SCMP_CMP_MASKED_EQ",
  }]);
  assert.deepEqual(allowed(p, "clone3"), [{
    names: ["clone3"],
    action: "SCMP_ACT_ERRNO",
    errnoRet: 38,
  }]);
  assert.deepEqual(defaultSeccompProfile([], "aarch64").architectures, [
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
  ]);
});

Deno.test("default profile: capability-conditional rules", () => {
  const p = defaultSeccompProfile([...DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
  for (const n of ["unshare", "mount", "setns", "clone", "clone3", "sethostname"]) {
    assert.ok(allowed(p, n).some((s) => s.action === "SCMP_ACT_ALLOW" && !s.args?.length), n);
  }
  assert.equal(allowed(p, "clone3").some((s) => s.action === "SCMP_ACT_ERRNO"), false);
  assert.ok(allowed(p, "process_vm_readv").length === 1);
  const none = defaultSeccompProfile([]);
  assert.equal(allowed(none, "chroot").length, 0);
  assert.equal(allowed(defaultSeccompProfile(["CAP_SYS_TIME"]), "clock_settime").length, 1);
});

Deno.test("seccompFor: RuntimeDefault, Unconfined, legacy paths, privileged, defaults", async () => {
  assert.equal(
    (await seccompFor(profile(Type.RuntimeDefault), "", false))?.defaultAction,
    "SCMP_ACT_ERRNO",
  );
  assert.equal(await seccompFor(profile(Type.Unconfined), "", false), undefined);
  assert.equal(await seccompFor(profile(Type.RuntimeDefault), "", true), undefined);
  assert.equal(await seccompFor(undefined, "", false), undefined);
  assert.ok(await seccompFor(undefined, "", false, { defaultWhenUnset: true }));
  assert.ok(await seccompFor(undefined, "runtime/default", false));
  assert.ok(await seccompFor(undefined, "docker/default", false));
  assert.equal(await seccompFor(undefined, "unconfined", false), undefined);
  await assert.rejects(seccompFor(undefined, "weird", false), (e) => isKind(e, "InvalidArgument"));
  await assert.rejects(
    seccompFor(profile(Type.Unconfined, "/x.json"), "", false),
    (e) => isKind(e, "InvalidArgument"),
  );
  // Capabilities given select the conditional rules.
  const admin = await seccompFor(profile(Type.RuntimeDefault), "", false, {
    capabilities: ["CAP_SYS_ADMIN"],
  });
  assert.ok(admin?.syscalls?.some((s) => s.names.includes("unshare")));
});

Deno.test("seccompFor: Localhost reads the JSON file; a missing or bad one is a clear error", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/profile.json`;
    const json = {
      defaultAction: "SCMP_ACT_ALLOW",
      syscalls: [{ names: ["mkdir"], action: "SCMP_ACT_ERRNO" }],
    };
    await Deno.writeTextFile(path, JSON.stringify(json));
    assert.deepEqual(await seccompFor(profile(Type.Localhost, path), "", false), json);
    assert.deepEqual(await seccompFor(undefined, `localhost/${path}`, false), json);
    await assert.rejects(
      seccompFor(profile(Type.Localhost, `${dir}/missing.json`), "", false),
      (e) => isKind(e, "NotFound") && String(e).includes(`${dir}/missing.json`),
    );
    await Deno.writeTextFile(`${dir}/bad.json`, "{not json");
    await assert.rejects(
      seccompFor(profile(Type.Localhost, `${dir}/bad.json`), "", false),
      (e) => isKind(e, "InvalidArgument") && String(e).includes(`${dir}/bad.json`),
    );
    await assert.rejects(
      seccompFor(profile(Type.Localhost, "relative.json"), "", false),
      (e) => isKind(e, "InvalidArgument"),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Real runs with runc

/** Runs `sh -c script` with the given seccomp profile and added capabilities. */
async function run(dir: string, script: string, type: Type, add: string[] = [], what = "sc") {
  const files = await sandboxFiles(`${dir}/files-${what}`);
  const config = ctrConfig({
    command: ["/bin/sh", "-c", script],
    linux: {
      securityContext: {
        seccomp: { profileType: type },
        capabilities: { addCapabilities: add },
      },
    },
  });
  const spec = await containerSpec(
    `c-${what}`,
    config,
    { id: "sb", config: podConfig(), pid: 1, netnsPath: "", files },
    { Env: ["PATH=/bin"] },
  );
  // No sandbox: runc makes every namespace.
  spec.linux.namespaces = [
    { type: "pid" },
    { type: "ipc" },
    { type: "uts" },
    { type: "mount" },
    { type: "network" },
  ];
  return await runSpec(dir, spec, what);
}

Deno.test({
  name: "runc: the default profile refuses unshare(CLONE_NEWUSER) that unconfined allows",
  ignore: !canRunc,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: () =>
    withTempDir(async (dir) => {
      // A user namespace needs no capability: only seccomp stands in the way.
      const script = "busybox unshare -U true && echo allowed";
      const open = await run(dir, script, Type.Unconfined, [], "unconfined");
      assert.equal(open.code, 0, open.stderr);
      assert.match(open.stdout, /^allowed$/m);
      const dflt = await run(dir, script, Type.RuntimeDefault, [], "default");
      assert.notEqual(dflt.code, 0);
      assert.doesNotMatch(dflt.stdout, /allowed/);
      assert.match(dflt.stderr, /Operation not permitted/);
      // With CAP_SYS_ADMIN the default profile allows unshare (and mount), as containerd's.
      const admin = await run(
        dir,
        "busybox unshare -m true && echo mountns",
        Type.RuntimeDefault,
        ["SYS_ADMIN"],
        "admin",
      );
      assert.equal(admin.code, 0, admin.stderr);
      assert.match(admin.stdout, /^mountns$/m);
      // Without CAP_SYS_ADMIN, a mount namespace is refused.
      const root = await run(dir, "busybox unshare -m true", Type.RuntimeDefault, [], "nomnt");
      assert.notEqual(root.code, 0);
    }),
});
