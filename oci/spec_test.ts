import assert from "node:assert/strict";
import { isKind } from "../plugins/errdefs.ts";
import {
  CFS_PERIOD,
  currentCapabilities,
  defaultSpec,
  hostDevices,
  parseGroup,
  parseMountFlag,
  parsePasswd,
  rootPath,
  withCpus,
  withHostname,
  withImageConfig,
  withMemoryLimit,
  withMounts,
  withPrivileged,
  withReadonlyRootfs,
  withUser,
} from "./spec.ts";

const PASSWD = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
broken line
app:x:1000:1001:app:/home/app:/bin/sh
`;
const GROUP = `root:x:0:
wheel:x:10:root,app
staff:x:50:app
appgrp:x:1001:
`;

async function withRoot(fn: (root: string) => Promise<void>) {
  const root = await Deno.makeTempDir({ prefix: "tainerd-spec-" });
  try {
    await Deno.mkdir(`${root}/etc`);
    await Deno.mkdir(`${root}/real`);
    await Deno.writeTextFile(`${root}/real/passwd`, PASSWD);
    // An absolute symlink resolves inside the root, never on the host.
    await Deno.symlink("/real/passwd", `${root}/etc/passwd`);
    await Deno.writeTextFile(`${root}/etc/group`, GROUP);
    await fn(root);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

Deno.test("parsePasswd() and parseGroup() skip comments and malformed lines", () => {
  assert.deepEqual(parsePasswd(PASSWD).map((e) => [e.name, e.uid, e.gid]), [
    ["root", 0, 0],
    ["daemon", 1, 1],
    ["app", 1000, 1001],
  ]);
  assert.deepEqual(parseGroup(GROUP)[1], { name: "wheel", gid: 10, members: ["root", "app"] });
});

Deno.test("rootPath() keeps symlinks inside the root", () =>
  withRoot(async (root) => {
    assert.equal(await rootPath(root, "/etc/passwd"), `${root}/real/passwd`);
    await Deno.symlink("../../../../etc/shadow", `${root}/etc/evil`);
    assert.equal(await rootPath(root, "/etc/evil"), `${root}/etc/shadow`);
  }));

Deno.test("withUser() resolves names from the rootfs's /etc/passwd and /etc/group", () =>
  withRoot(async (root) => {
    const cases: [string, number, number, number[]][] = [
      ["app", 1000, 1001, [1001, 10, 50]],
      ["1000", 1000, 1001, [1001, 10, 50]],
      ["4242", 4242, 0, [0]],
      ["app:staff", 1000, 50, [10, 50]],
      ["app:7", 1000, 7, [7, 10, 50]],
      ["5:6", 5, 6, [6]],
      ["root", 0, 0, [0, 10]],
    ];
    for (const [user, uid, gid, gids] of cases) {
      const spec = defaultSpec("ns", "id");
      await withUser(spec, user, root);
      assert.deepEqual(
        [spec.process.user.uid, spec.process.user.gid, spec.process.user.additionalGids],
        [uid, gid, gids],
        user,
      );
    }
    const spec = defaultSpec("ns", "id");
    await assert.rejects(withUser(spec, "nobody", root), (e) => isKind(e, "NotFound"));
    await assert.rejects(withUser(spec, "app:nogroup", root), (e) => isKind(e, "NotFound"));
    await assert.rejects(withUser(spec, "a:b:c", root), (e) => isKind(e, "InvalidArgument"));
  }));

Deno.test("withImageConfig() keeps a named user for withUser()", () => {
  const spec = defaultSpec("ns", "id");
  withImageConfig(spec, { User: "1:2", Cmd: ["sh"] }, []);
  assert.deepEqual([spec.process.user.uid, spec.process.user.gid], [1, 2]);
});

Deno.test("parseMountFlag() reads ctr's --mount syntax; withMounts() replaces a destination", () => {
  assert.deepEqual(parseMountFlag("type=bind,src=/a,dst=/b,options=rbind:ro"), {
    destination: "/b",
    type: "bind",
    source: "/a",
    options: ["rbind", "ro"],
  });
  assert.deepEqual(parseMountFlag("type=tmpfs,source=tmpfs,destination=/t"), {
    destination: "/t",
    type: "tmpfs",
    source: "tmpfs",
  });
  assert.throws(() => parseMountFlag("type=bind,src=/a"), (e) => isKind(e, "InvalidArgument"));
  assert.throws(() => parseMountFlag("bogus"), (e) => isKind(e, "InvalidArgument"));
  const spec = defaultSpec("ns", "id");
  const n = spec.mounts.length;
  withMounts(spec, [{ destination: "/run", type: "bind", source: "/x", options: ["rbind"] }]);
  assert.equal(spec.mounts.length, n);
  assert.equal(spec.mounts.at(-1)!.source, "/x");
});

Deno.test("withHostname(), withCpus(), withMemoryLimit() and withReadonlyRootfs()", () => {
  const spec = defaultSpec("ns", "id");
  withHostname(spec, "box");
  withCpus(spec, 1.5);
  withMemoryLimit(spec, 16 * 1024 * 1024);
  withReadonlyRootfs(spec);
  assert.equal(spec.hostname, "box");
  assert.deepEqual(spec.linux.resources.cpu, { quota: 150000, period: CFS_PERIOD });
  assert.deepEqual(spec.linux.resources.memory, { limit: 16777216 });
  assert.equal(spec.root.readonly, true);
  assert.throws(() => withCpus(spec, 0), (e) => isKind(e, "InvalidArgument"));
  assert.throws(() => withMemoryLimit(spec, -1), (e) => isKind(e, "InvalidArgument"));
});

Deno.test("withPrivileged() grants every capability and device, and masks nothing", () => {
  const spec = defaultSpec("ns", "id");
  const devices = hostDevices();
  assert.ok(devices.some((d) => d.path === "/dev/null" && d.major === 1 && d.minor === 3));
  withPrivileged(spec, devices, currentCapabilities("CapEff:\t000001ffffffffff\n"));
  assert.ok(spec.process.capabilities.bounding!.includes("CAP_SYS_ADMIN"));
  assert.deepEqual(spec.process.capabilities.bounding, spec.process.capabilities.effective);
  assert.deepEqual(spec.linux.maskedPaths, []);
  assert.deepEqual(spec.linux.readonlyPaths, []);
  assert.deepEqual(spec.linux.resources.devices, [{ allow: true, access: "rwm" }]);
  assert.ok(!spec.mounts.find((m) => m.type === "sysfs")!.options!.includes("ro"));
  assert.equal(spec.linux.devices!.length, devices.length);
});

Deno.test("currentCapabilities() reads CapEff", () => {
  assert.deepEqual(currentCapabilities("CapEff:\t0000000000000003\n"), [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
  ]);
  assert.ok(currentCapabilities().length > 0);
});
