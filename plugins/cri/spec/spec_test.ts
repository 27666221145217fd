/**
 * Tests of the CRI spec rules (args, env, mounts, namespaces, resources, capabilities,
 * privileged, users, resolv.conf) and real runs of generated specs with runc: capabilities
 * dropped, read-only rootfs, run_as_user, and a container joining a sandbox's namespaces.
 *
 * @module
 */

import assert from "node:assert/strict";
import { MountPropagation, NamespaceMode } from "../../../api/gen/runtime/v1/api_pb.ts";
import type { ContainerConfig, PodSandboxConfig } from "../../../api/gen/runtime/v1/api_pb.ts";
import type { ImageConfig, Spec } from "../../../oci/spec.ts";
import { isKind } from "../../errdefs.ts";
import { lookupMount } from "../../../sys/mountinfo.ts";
import {
  Annotations,
  cgroupsPath,
  containerSpec,
  generateResolvConf,
  processArgs,
  type SandboxFiles,
  sandboxSpec,
} from "./spec.ts";
import {
  canRunc,
  ctrConfig,
  type Detached,
  podConfig,
  runSpec,
  sandboxFiles,
  startDetached,
  withTempDir,
} from "./test_util.ts";

const IMAGE: ImageConfig = {
  Entrypoint: ["/bin/entry"],
  Cmd: ["default-arg"],
  Env: ["PATH=/usr/bin:/bin", "FROM_IMAGE=1", "SHARED=image"],
  WorkingDir: "/work",
};

const enc = (s: string) => new TextEncoder().encode(s);

/** A container spec for `config` in a sandbox of pid 4242 whose files are under `dir`. */
async function ctrSpec(
  dir: string,
  config: ContainerConfig,
  opts: { pod?: PodSandboxConfig; image?: ImageConfig; rootfs?: string; netns?: string } = {},
): Promise<Spec> {
  const files = await sandboxFiles(dir);
  return await containerSpec(
    "ctr1",
    config,
    {
      id: "sb1",
      config: opts.pod ?? podConfig(),
      pid: 4242,
      netnsPath: opts.netns ?? "/var/run/netns/cni-1",
      files,
    },
    opts.image ?? IMAGE,
    { rootfs: opts.rootfs },
  );
}

const ns = (spec: Spec) =>
  Object.fromEntries(spec.linux.namespaces.map((n) => [n.type, n.path ?? ""]));
const mount = (spec: Spec, dst: string) => spec.mounts.find((m) => m.destination === dst);

// ---------------------------------------------------------------------------------------------
// Rules

Deno.test("args: command and args combine with the image's entrypoint and cmd as containerd", () => {
  const args = (command: string[], a: string[], image: ImageConfig = IMAGE) =>
    processArgs(ctrConfig({ command, args: a }), image);
  assert.deepEqual(args([], []), ["/bin/entry", "default-arg"]);
  assert.deepEqual(args([], ["x", "y"]), ["/bin/entry", "x", "y"]);
  // A command replaces the entrypoint and the image's cmd, even without args.
  assert.deepEqual(args(["/bin/sh"], []), ["/bin/sh"]);
  assert.deepEqual(args(["/bin/sh"], ["-c", "true"]), ["/bin/sh", "-c", "true"]);
  // An entrypoint of [""] is none.
  assert.deepEqual(args([], [], { Entrypoint: [""], Cmd: ["/bin/cmd"] }), ["/bin/cmd"]);
  assert.deepEqual(args([], ["a"], { Cmd: ["/bin/cmd"] }), ["a"]);
  assert.throws(() => args([], [], {}), (e) => isKind(e, "InvalidArgument"));
});

Deno.test("env, cwd, tty, annotations, cgroups path", async () => {
  await withTempDir(async (dir) => {
    const spec = await ctrSpec(
      dir,
      ctrConfig({
        envs: [{ key: "SHARED", value: enc("ctr") }, { key: "NEW", value: enc("a=b") }],
        tty: true,
      }),
      { pod: podConfig({ linux: { cgroupParent: "/kubepods/burstable/podx" } }) },
    );
    const env = spec.process.env;
    assert.ok(env.includes("FROM_IMAGE=1"));
    assert.ok(env.includes("SHARED=ctr") && !env.includes("SHARED=image"));
    assert.ok(env.includes("NEW=a=b"));
    assert.ok(env.includes("HOSTNAME=podhost"));
    assert.ok(env.includes("TERM=xterm"));
    assert.equal(spec.process.terminal, true);
    assert.equal(spec.process.cwd, "/work");
    assert.equal(spec.process.noNewPrivileges, false);
    assert.deepEqual(spec.process.rlimits, []);
    assert.equal(spec.linux.cgroupsPath, "/kubepods/burstable/podx/ctr1");
    assert.deepEqual(spec.annotations, {
      [Annotations.ContainerType]: "container",
      [Annotations.SandboxID]: "sb1",
      [Annotations.SandboxNamespace]: "default",
      [Annotations.SandboxName]: "pod",
      [Annotations.ContainerName]: "ctr",
      [Annotations.ImageName]: "docker.io/library/busybox:latest",
    });
    const wd = await ctrSpec(dir, ctrConfig({ workingDir: "/elsewhere" }));
    assert.equal(wd.process.cwd, "/elsewhere");
    assert.equal(wd.linux.cgroupsPath, "/k8s.io/ctr1");
  });
  assert.equal(
    cgroupsPath("/kubepods.slice/kubepods-pod1.slice", "c"),
    "kubepods-pod1.slice:cri-containerd:c",
  );
});

Deno.test("mounts: CRI binds with propagation and ro, sandbox files, shm, order", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(`${dir}/data/sub`, { recursive: true });
    const spec = await ctrSpec(
      dir,
      ctrConfig({
        mounts: [
          { containerPath: "/data/sub", hostPath: `${dir}/data/sub`, readonly: true },
          { containerPath: "/data", hostPath: `${dir}/data` },
          { containerPath: "/new", hostPath: `${dir}/created/on/demand` },
        ],
        linux: { securityContext: { readonlyRootfs: true } },
      }),
    );
    const dsts = spec.mounts.map((m) => m.destination);
    // Shallower first: /data before /data/sub.
    assert.ok(dsts.indexOf("/data") < dsts.indexOf("/data/sub"));
    assert.deepEqual(mount(spec, "/data/sub")?.options, ["rbind", "rprivate", "ro"]);
    assert.deepEqual(mount(spec, "/data")?.options, ["rbind", "rprivate", "rw"]);
    assert.equal(mount(spec, "/data")?.type, "bind");
    // A missing host path is created as a directory.
    assert.ok((await Deno.stat(`${dir}/created/on/demand`)).isDirectory);
    // The sandbox's files, read-only with a read-only rootfs; /dev/shm rw.
    assert.equal(mount(spec, "/etc/hosts")?.source, `${dir}/hosts`);
    assert.deepEqual(mount(spec, "/etc/hosts")?.options, ["rbind", "rprivate", "ro"]);
    assert.equal(mount(spec, "/etc/resolv.conf")?.source, `${dir}/resolv.conf`);
    assert.equal(mount(spec, "/etc/hostname")?.source, `${dir}/hostname`);
    assert.deepEqual(mount(spec, "/dev/shm"), {
      destination: "/dev/shm",
      type: "bind",
      source: `${dir}/shm`,
      options: ["rbind", "rprivate", "rw"],
    });
    assert.equal(spec.mounts.filter((m) => m.destination === "/dev/shm").length, 1);
    assert.deepEqual(mount(spec, "/sys/fs/cgroup")?.options, [
      "nosuid",
      "noexec",
      "nodev",
      "relatime",
      "ro",
    ]);
    assert.equal(mount(spec, "/run"), undefined);
    assert.equal(spec.root.readonly, true);

    // The CRI config's own /etc/hosts wins; with the node's IPC, the node's /dev/shm.
    const own = await ctrSpec(
      dir,
      ctrConfig({
        mounts: [{ containerPath: "/etc/hosts", hostPath: `${dir}/data` }],
        linux: { securityContext: { namespaceOptions: { ipc: NamespaceMode.NODE } } },
      }),
    );
    assert.equal(own.mounts.filter((m) => m.destination === "/etc/hosts").length, 1);
    assert.equal(mount(own, "/etc/hosts")?.source, `${dir}/data`);
    assert.equal(mount(own, "/dev/shm")?.source, "/dev/shm");

    // A supplied /dev drops the default mounts under /dev.
    const dev = await ctrSpec(
      dir,
      ctrConfig({ mounts: [{ containerPath: "/dev", hostPath: `${dir}/data` }] }),
    );
    assert.deepEqual(
      dev.mounts.filter((m) => m.destination.startsWith("/dev/")).map((m) => m.destination),
      ["/dev/shm"],
    );
  });
});

Deno.test("mounts: rslave/rshared need a slave or shared host mount", async () => {
  await withTempDir(async (dir) => {
    const mk = (p: MountPropagation) =>
      ctrSpec(dir, ctrConfig({ mounts: [{ containerPath: "/m", hostPath: dir, propagation: p }] }));
    const tmp = lookupMount(dir);
    if (/shared:/.test(tmp.optional)) {
      const s = await mk(MountPropagation.PROPAGATION_BIDIRECTIONAL);
      assert.deepEqual(mount(s, "/m")?.options, ["rbind", "rshared", "rw"]);
      assert.equal(s.linux.rootfsPropagation, "rshared");
      const h = await mk(MountPropagation.PROPAGATION_HOST_TO_CONTAINER);
      assert.deepEqual(mount(h, "/m")?.options, ["rbind", "rslave", "rw"]);
      assert.equal(h.linux.rootfsPropagation, "rslave");
    } else {
      await assert.rejects(
        mk(MountPropagation.PROPAGATION_BIDIRECTIONAL),
        (e) => isKind(e, "InvalidArgument") && /not a shared mount/.test(String(e)),
      );
    }
  });
});

Deno.test("namespaces: sandbox per mode, container joins the sandbox's", async () => {
  await withTempDir(async (dir) => {
    const files = await sandboxFiles(dir);
    const sb = (
      n: { network?: NamespaceMode; pid?: NamespaceMode; ipc?: NamespaceMode },
      netnsPath?: string,
    ) =>
      ns(
        sandboxSpec(
          "sb1",
          podConfig({ linux: { securityContext: { namespaceOptions: n } } }),
          IMAGE,
          { files, netnsPath },
        ),
      );
    assert.deepEqual(sb({}), { pid: "", ipc: "", uts: "", mount: "", network: "" });
    assert.deepEqual(sb({}, "/run/netns/x").network, "/run/netns/x");
    assert.deepEqual(sb({ pid: NamespaceMode.CONTAINER }).pid, "");
    assert.deepEqual(
      sb({ network: NamespaceMode.NODE, pid: NamespaceMode.NODE, ipc: NamespaceMode.NODE }),
      {
        mount: "",
      },
    );
    const hostNet = sandboxSpec(
      "sb1",
      podConfig({
        linux: { securityContext: { namespaceOptions: { network: NamespaceMode.NODE } } },
      }),
      IMAGE,
      { files },
    );
    assert.equal(hostNet.hostname, undefined);

    const ctr = async (
      n: { network?: NamespaceMode; pid?: NamespaceMode; ipc?: NamespaceMode },
      netns = "/run/netns/x",
    ) =>
      ns(
        await ctrSpec(dir, ctrConfig({ linux: { securityContext: { namespaceOptions: n } } }), {
          netns,
        }),
      );
    assert.deepEqual(await ctr({}), {
      mount: "",
      network: "/run/netns/x",
      ipc: "/proc/4242/ns/ipc",
      uts: "/proc/4242/ns/uts",
      pid: "/proc/4242/ns/pid",
    });
    assert.equal((await ctr({ pid: NamespaceMode.CONTAINER })).pid, "");
    assert.equal("pid" in (await ctr({ pid: NamespaceMode.NODE })), false);
    assert.equal("network" in (await ctr({ network: NamespaceMode.NODE }, "")), false);
    assert.equal((await ctr({}, "")).network, "/proc/4242/ns/net");
  });
});

Deno.test("sandbox spec: args, env, hostname, sysctls, OOM, shares, user, mounts, annotations", async () => {
  await withTempDir(async (dir) => {
    const files = await sandboxFiles(dir);
    const spec = sandboxSpec(
      "sb1",
      podConfig({
        linux: {
          sysctls: { "net.ipv4.ip_unprivileged_port_start": "0" },
          securityContext: {
            runAsUser: { value: 65535n },
            runAsGroup: { value: 65534n },
            supplementalGroups: [5n],
          },
        },
      }),
      { Entrypoint: ["/pause"], Cmd: ["-v"], Env: ["A=1"], WorkingDir: "/w", User: "1:1" },
      { files, cgroupParent: "/kubepods/podx" },
    );
    assert.deepEqual(spec.process.args, ["/pause", "-v"]);
    assert.ok(spec.process.env.includes("A=1"));
    assert.equal(spec.process.cwd, "/w");
    assert.equal(spec.hostname, "podhost");
    assert.equal(spec.root.readonly, true);
    assert.equal(spec.process.noNewPrivileges, true);
    assert.equal(spec.process.oomScoreAdj, -998);
    assert.equal(spec.linux.resources.cpu?.shares, 2);
    assert.equal(spec.linux.cgroupsPath, "/kubepods/podx/sb1");
    assert.deepEqual(spec.linux.sysctl, { "net.ipv4.ip_unprivileged_port_start": "0" });
    assert.deepEqual(spec.process.user, { uid: 65535, gid: 65534, additionalGids: [65534, 5] });
    assert.deepEqual(mount(spec, "/dev/shm"), {
      destination: "/dev/shm",
      type: "bind",
      source: files.shmPath,
      options: ["rbind", "ro"],
    });
    assert.equal(mount(spec, "/etc/resolv.conf")?.source, files.resolvConfPath);
    assert.equal(spec.linux.seccomp, undefined);
    assert.deepEqual(spec.annotations, {
      [Annotations.ContainerType]: "sandbox",
      [Annotations.SandboxID]: "sb1",
      [Annotations.SandboxNamespace]: "default",
      [Annotations.SandboxUID]: "uid-1",
      [Annotations.SandboxName]: "pod",
      [Annotations.SandboxLogDir]: "/var/log/pods/pod",
    });
    const dflt = sandboxSpec("sb2", podConfig(), { Cmd: ["/pause"], User: "65535" }, {
      files,
      seccompDefault: true,
    });
    assert.equal(dflt.linux.cgroupsPath, "/k8s.io/sb2");
    assert.deepEqual(dflt.process.user, { uid: 65535, gid: 0, additionalGids: [0] });
    assert.equal((dflt.linux.seccomp as { defaultAction: string }).defaultAction, "SCMP_ACT_ERRNO");
    assert.throws(
      () => sandboxSpec("sb3", podConfig(), {}, { files }),
      (e) => isKind(e, "InvalidArgument"),
    );
    assert.throws(
      () => sandboxSpec("sb3", podConfig(), { Cmd: ["x"], User: "nobody" }, { files }),
      (e) => isKind(e, "InvalidArgument"),
    );
  });
});

Deno.test("resources: cpu, memory (+swap), oom score adj, unified", async () => {
  await withTempDir(async (dir) => {
    const spec = await ctrSpec(
      dir,
      ctrConfig({
        linux: {
          resources: {
            cpuPeriod: 100000n,
            cpuQuota: 50000n,
            cpuShares: 512n,
            cpusetCpus: "0",
            cpusetMems: "0",
            memoryLimitInBytes: 64n << 20n,
            oomScoreAdj: 500n,
            unified: { "memory.high": "1000000" },
          },
        },
      }),
    );
    const r = spec.linux.resources;
    assert.deepEqual(r.cpu, { period: 100000, quota: 50000, shares: 512, cpus: "0", mems: "0" });
    assert.equal(r.memory?.limit, 64 << 20);
    let swap = false;
    try {
      swap = Deno.statSync("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").isFile;
    } catch {
      // cgroup v2, or no swap accounting
    }
    if (swap) assert.equal(r.memory?.swap, 64 << 20);
    assert.deepEqual(r.unified, { "memory.high": "1000000" });
    assert.equal(spec.process.oomScoreAdj, 500);
    const none = await ctrSpec(dir, ctrConfig());
    assert.equal(none.process.oomScoreAdj, undefined);
    assert.equal(none.linux.resources.cpu, undefined);
  });
  // Restricted: never below this process's own score.
  await withTempDir(async (dir) => {
    const own = Number((await Deno.readTextFile("/proc/self/oom_score_adj")).trim());
    const spec = await containerSpec(
      "c",
      ctrConfig({ linux: { resources: { oomScoreAdj: -1000n } } }),
      { id: "sb", config: podConfig(), pid: 1, netnsPath: "", files: await sandboxFiles(dir) },
      IMAGE,
      { restrictOomScoreAdj: true },
    );
    assert.equal(spec.process.oomScoreAdj, Math.max(own, -1000));
  });
});

Deno.test("capabilities: defaults, add/drop, ALL; privileged", async () => {
  await withTempDir(async (dir) => {
    const caps = async (add: string[], drop: string[]) =>
      (await ctrSpec(
        dir,
        ctrConfig({
          linux: {
            securityContext: { capabilities: { addCapabilities: add, dropCapabilities: drop } },
          },
        }),
      ))
        .process.capabilities;
    const dflt = (await ctrSpec(dir, ctrConfig())).process.capabilities;
    assert.equal(dflt.bounding?.length, 14);
    assert.ok(dflt.bounding?.includes("CAP_NET_RAW"));
    assert.equal(dflt.ambient, undefined);
    const c1 = await caps(["SYS_ADMIN", "cap_net_admin"], ["CHOWN", "NET_RAW"]);
    for (const set of [c1.bounding, c1.effective, c1.permitted]) {
      assert.ok(set && set.includes("CAP_SYS_ADMIN") && set.includes("CAP_NET_ADMIN"));
      assert.ok(!set.includes("CAP_CHOWN") && !set.includes("CAP_NET_RAW"));
    }
    const c2 = await caps(["ALL"], ["CHOWN"]);
    assert.ok(c2.bounding!.length > 14 && !c2.bounding!.includes("CAP_CHOWN"));
    assert.ok(c2.bounding!.includes("CAP_SYS_ADMIN"));
    const c3 = await caps(["KILL"], ["all"]);
    assert.deepEqual(c3.bounding, ["CAP_KILL"]);

    // Privileged: only in a privileged sandbox; every capability, no masked paths, no seccomp.
    const priv = ctrConfig({
      linux: { securityContext: { privileged: true, seccomp: { profileType: 0 } } },
    });
    await assert.rejects(ctrSpec(dir, priv), (e) => isKind(e, "InvalidArgument"));
    const spec = await ctrSpec(dir, priv, {
      pod: podConfig({ linux: { securityContext: { privileged: true } } }),
    });
    assert.ok(spec.process.capabilities.bounding!.includes("CAP_SYS_ADMIN"));
    assert.deepEqual(spec.linux.maskedPaths, []);
    assert.deepEqual(spec.linux.readonlyPaths, []);
    assert.equal(spec.linux.seccomp, undefined);
    assert.deepEqual(spec.linux.resources.devices, [{ allow: true, access: "rwm" }]);
    assert.ok(spec.linux.devices!.some((d) => d.path === "/dev/null"));
    assert.ok(!mount(spec, "/sys")?.options?.includes("ro"));
    assert.ok(!mount(spec, "/sys/fs/cgroup")?.options?.includes("ro"));
  });
});

Deno.test("security: masked/readonly paths, no_new_privs, seccomp, devices", async () => {
  await withTempDir(async (dir) => {
    const dflt = await ctrSpec(dir, ctrConfig());
    assert.ok(dflt.linux.maskedPaths.includes("/proc/kcore"));
    assert.ok(dflt.linux.readonlyPaths.includes("/proc/sys"));
    assert.equal(dflt.linux.seccomp, undefined);
    const spec = await ctrSpec(
      dir,
      ctrConfig({
        devices: [{ containerPath: "/dev/mynull", hostPath: "/dev/null", permissions: "rw" }],
        linux: {
          securityContext: {
            maskedPaths: ["/proc/x"],
            readonlyPaths: ["/proc/y"],
            noNewPrivs: true,
            seccomp: { profileType: 0 },
          },
        },
      }),
    );
    assert.deepEqual(spec.linux.maskedPaths, ["/proc/x"]);
    assert.deepEqual(spec.linux.readonlyPaths, ["/proc/y"]);
    assert.equal(spec.process.noNewPrivileges, true);
    assert.equal((spec.linux.seccomp as { defaultAction: string }).defaultAction, "SCMP_ACT_ERRNO");
    assert.deepEqual(spec.linux.devices, [{
      path: "/dev/mynull",
      type: "c",
      major: 1,
      minor: 3,
      fileMode: 0o666,
      uid: 0,
      gid: 0,
    }]);
    assert.deepEqual(spec.linux.resources.devices.at(-1), {
      allow: true,
      type: "c",
      major: 1,
      minor: 3,
      access: "rw",
    });
    await assert.rejects(
      ctrSpec(dir, ctrConfig({ devices: [{ containerPath: "/dev/x", hostPath: dir }] })),
      (e) => isKind(e, "InvalidArgument"),
    );
    await assert.rejects(
      ctrSpec(dir, ctrConfig({ devices: [{ containerPath: "/dev/x", hostPath: `${dir}/nope` }] })),
      (e) => isKind(e, "NotFound"),
    );
  });
});

Deno.test("users: run_as_user/group, run_as_username and groups from a rootfs, image user", async () => {
  await withTempDir(async (dir) => {
    const rootfs = `${dir}/rootfs`;
    await Deno.mkdir(`${rootfs}/etc`, { recursive: true });
    await Deno.writeTextFile(
      `${rootfs}/etc/passwd`,
      "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/:/bin/sh\n",
    );
    await Deno.writeTextFile(
      `${rootfs}/etc/group`,
      "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nvideo:x:44:alice\n",
    );
    const user = async (
      sc: Record<string, unknown>,
      image: ImageConfig = IMAGE,
      withRootfs = true,
    ) =>
      (await ctrSpec(dir, ctrConfig({ linux: { securityContext: sc } }), {
        image,
        rootfs: withRootfs ? rootfs : undefined,
      }))
        .process.user;
    assert.deepEqual(await user({}), { uid: 0, gid: 0, additionalGids: [0] });
    assert.deepEqual(await user({ runAsUsername: "alice" }), {
      uid: 1000,
      gid: 1000,
      additionalGids: [1000, 10, 44],
    });
    assert.deepEqual(
      await user({ runAsUsername: "alice", runAsUser: { value: 5n }, runAsGroup: { value: 7n } }),
      {
        uid: 1000,
        gid: 7,
        additionalGids: [7, 10, 44],
      },
    );
    assert.deepEqual(
      await user({ runAsUser: { value: 1001n }, supplementalGroups: [3000n, 10n] }),
      {
        uid: 1001,
        gid: 1001,
        additionalGids: [1001, 10, 3000],
      },
    );
    // The image's user, by name, when the config has none.
    assert.deepEqual(await user({}, { ...IMAGE, User: "bob" }), {
      uid: 1001,
      gid: 1001,
      additionalGids: [1001, 10],
    });
    assert.deepEqual(await user({ runAsUser: { value: 1234n } }, IMAGE, false), {
      uid: 1234,
      gid: 0,
      additionalGids: [0],
    });
    await assert.rejects(user({ runAsUsername: "nobody" }), (e) => isKind(e, "NotFound"));
    await assert.rejects(user({ runAsGroup: { value: 5n } }), (e) => isKind(e, "InvalidArgument"));
    await assert.rejects(
      user({ runAsUsername: "alice" }, IMAGE, false),
      (e) => isKind(e, "InvalidArgument"),
    );
  });
});

Deno.test("resolv.conf: from the DNS config as containerd writes it, else the host's", () => {
  const dns = (servers: string[], searches: string[], options: string[]) =>
    podConfig({ dnsConfig: { servers, searches, options } }).dnsConfig;
  assert.equal(
    generateResolvConf(
      dns(["10.0.0.10", "8.8.8.8"], ["ns.svc.cluster.local", "svc.cluster.local"], ["ndots:5"]),
      "host\n",
    ),
    "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\nnameserver 8.8.8.8\noptions ndots:5\n",
  );
  assert.equal(generateResolvConf(dns(["1.1.1.1"], [], []), "host\n"), "nameserver 1.1.1.1\n");
  assert.equal(generateResolvConf(undefined, "nameserver 9.9.9.9\n"), "nameserver 9.9.9.9\n");
  assert.equal(generateResolvConf(dns([], [], []), "host\n"), "host\n");
  assert.throws(
    () => generateResolvConf(dns([], ["a", "b", "c", "d", "e", "f", "g"], []), ""),
    (e) => isKind(e, "InvalidArgument"),
  );
});

// ---------------------------------------------------------------------------------------------
// Real runs with runc

const real = { ignore: !canRunc, sanitizeResources: false, sanitizeOps: false };

/** Runs `sh -c script` in a container made from `config` in the sandbox `sb`. */
async function runIn(
  dir: string,
  sb: { pid: number; files: SandboxFiles; pod: PodSandboxConfig } | undefined,
  config: ContainerConfig,
  script: string,
  what: string,
  rootfs?: string,
) {
  const files = sb?.files ?? await sandboxFiles(`${dir}/files-${crypto.randomUUID().slice(0, 6)}`);
  config.command = ["/bin/sh", "-c", script];
  const spec = await containerSpec(
    `c-${what}`,
    config,
    {
      id: "sb",
      config: sb?.pod ?? podConfig(),
      pid: sb?.pid ?? 1,
      netnsPath: sb ? `/proc/${sb.pid}/ns/net` : "",
      files,
    },
    { Env: ["PATH=/bin"] },
    { rootfs },
  );
  if (!sb) {
    // No sandbox: the namespaces runc makes itself.
    spec.linux.namespaces = [{ type: "pid" }, { type: "ipc" }, { type: "uts" }, { type: "mount" }, {
      type: "network",
    }];
  }
  return await runSpec(dir, spec, what);
}

Deno.test({
  name: "runc: dropped CAP_CHOWN shows in CapEff and makes chown fail",
  ...real,
  fn: () =>
    withTempDir(async (dir) => {
      await Deno.mkdir(`${dir}/f`);
      const keep = await runIn(
        dir,
        undefined,
        ctrConfig(),
        "touch /tmp/x && busybox chown 1 /tmp/x && echo ok; grep CapEff /proc/self/status",
        "capkeep",
      );
      assert.equal(keep.code, 0, keep.stderr);
      assert.match(keep.stdout, /^ok$/m);
      assert.match(keep.stdout, /CapEff:\s*00000000a80425fb/);
      const drop = await runIn(
        dir,
        undefined,
        ctrConfig({
          linux: { securityContext: { capabilities: { dropCapabilities: ["CHOWN"] } } },
        }),
        "grep CapEff /proc/self/status; touch /tmp/x; busybox chown 1 /tmp/x",
        "capdrop",
      );
      assert.notEqual(drop.code, 0);
      assert.match(drop.stdout, /CapEff:\s*00000000a80425fa/);
      assert.match(drop.stderr, /Operation not permitted/);
    }),
});

Deno.test({
  name: "runc: a read-only rootfs refuses writes; run_as_user shows in id",
  ...real,
  fn: () =>
    withTempDir(async (dir) => {
      const ro = await runIn(
        dir,
        undefined,
        ctrConfig({ linux: { securityContext: { readonlyRootfs: true } } }),
        "touch /file && echo wrote; touch /dev/shm/ok && echo shm",
        "ro",
      );
      assert.match(ro.stderr, /Read-only file system/);
      assert.doesNotMatch(ro.stdout, /wrote/);
      assert.match(ro.stdout, /^shm$/m);
      const rootfs = `${dir}/users`;
      await Deno.mkdir(`${rootfs}/etc`, { recursive: true });
      await Deno.writeTextFile(
        `${rootfs}/etc/passwd`,
        "root:x:0:0::/:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n",
      );
      await Deno.writeTextFile(`${rootfs}/etc/group`, "root:x:0:\nwheel:x:10:alice\n");
      const id = await runIn(
        dir,
        undefined,
        ctrConfig({
          linux: { securityContext: { runAsUsername: "alice", supplementalGroups: [3000n] } },
        }),
        "id -u; id -g; id -G",
        "user",
        rootfs,
      );
      assert.equal(id.code, 0, id.stderr);
      assert.equal(id.stdout, "1000\n1000\n1000 10 3000\n");
      const uid = await runIn(
        dir,
        undefined,
        ctrConfig({
          linux: { securityContext: { runAsUser: { value: 4321n }, runAsGroup: { value: 99n } } },
        }),
        "id -u; id -g",
        "uid",
      );
      assert.equal(uid.stdout, "4321\n99\n", uid.stderr);
    }),
});

Deno.test({
  name: "runc: a container joins the sandbox's namespaces and sees its files",
  ...real,
  fn: () =>
    withTempDir(async (dir) => {
      const files = await sandboxFiles(dir);
      const pod = podConfig({ hostname: "mypod" });
      const sbSpec = sandboxSpec("sbx", pod, { Cmd: ["/bin/sleep", "3600"] }, {
        files,
        restrictOomScoreAdj: true, // -998 needs CAP_SYS_RESOURCE, which this host may withhold
      });
      let sb: Detached | undefined;
      try {
        sb = await startDetached(dir, sbSpec, "sandbox");
        const want = await Promise.all(
          ["uts", "ipc", "net", "pid"].map((n) => Deno.readLink(`/proc/${sb!.pid}/ns/${n}`)),
        );
        assert.notEqual(want[0], await Deno.readLink("/proc/self/ns/uts"));
        const out = await runIn(
          dir,
          { pid: sb.pid, files, pod },
          ctrConfig(),
          "for n in uts ipc net pid; do busybox readlink /proc/self/ns/$n; done; hostname; cat /etc/hostname /etc/resolv.conf; ps -o comm | grep -xc sleep",
          "join",
        );
        assert.equal(out.code, 0, out.stderr);
        const lines = out.stdout.trim().split("\n");
        assert.deepEqual(lines.slice(0, 4), want);
        assert.deepEqual(lines.slice(4), ["mypod", "podhost", "nameserver 10.0.0.10", "1"]);
      } finally {
        await sb?.stop();
      }
    }),
});
