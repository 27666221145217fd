/**
 * OCI runtime specs, as containerd's `oci` package builds them: the default Linux spec and
 * the options `tainerd run` applies (args, env, cwd, user, tty, host networking, image
 * config, mounts, hostname, CPU and memory limits, privileged, read-only rootfs).
 *
 * @module
 */

import { invalidArgument, notFound } from "../plugins/errdefs.ts";

/** The type URL containerd stores specs under. */
export const SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/** The type URL of a process spec (Tasks.Exec). */
export const PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/** The type URL of Linux resources (Tasks.Update). */
export const RESOURCES_TYPE_URL =
  "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/** A device node created in the container (`linux.devices`). */
export interface LinuxDevice {
  path: string;
  type: string;
  major: number;
  minor: number;
  fileMode?: number;
  uid?: number;
  gid?: number;
}

/** An OCI mount. */
export interface SpecMount {
  destination: string;
  type?: string;
  source?: string;
  options?: string[];
}

/** The parts of an OCI runtime spec tainerd builds (others pass through untouched). */
export interface Spec {
  ociVersion: string;
  root: { path: string; readonly?: boolean };
  process: {
    terminal?: boolean;
    user: { uid: number; gid: number; additionalGids?: number[] };
    capabilities: Partial<
      Record<"bounding" | "permitted" | "effective" | "inheritable" | "ambient", string[]>
    >;
    args: string[];
    env: string[];
    cwd: string;
    rlimits: { type: string; hard: number; soft: number }[];
    noNewPrivileges: boolean;
    consoleSize?: { height: number; width: number };
    /** `/proc/<pid>/oom_score_adj` of the process. */
    oomScoreAdj?: number;
  };
  hostname?: string;
  mounts: SpecMount[];
  linux: {
    namespaces: { type: string; path?: string }[];
    maskedPaths: string[];
    readonlyPaths: string[];
    cgroupsPath: string;
    resources: {
      devices: { allow: boolean; access: string; type?: string; major?: number; minor?: number }[];
      cpu?: { quota?: number; period?: number; [k: string]: unknown };
      memory?: { limit?: number; [k: string]: unknown };
      [k: string]: unknown;
    };
    devices?: LinuxDevice[];
    /** Kernel parameters set in the container's namespaces (`net.ipv4.ip_forward`: `1`). */
    sysctl?: Record<string, string>;
    /** Propagation of the rootfs mount (`rslave`, `rshared`, …). */
    rootfsPropagation?: string;
    [k: string]: unknown;
  };
  annotations?: Record<string, string>;
  [k: string]: unknown;
}

const DEFAULT_CAPS = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_FSETID",
  "CAP_FOWNER",
  "CAP_MKNOD",
  "CAP_NET_RAW",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETFCAP",
  "CAP_SETPCAP",
  "CAP_NET_BIND_SERVICE",
  "CAP_SYS_CHROOT",
  "CAP_KILL",
  "CAP_AUDIT_WRITE",
];

/** The default PATH of containers. */
export const DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** containerd's default Linux spec for a container in a namespace. */
export function defaultSpec(namespace: string, id: string): Spec {
  return {
    ociVersion: "1.0.2-dev",
    root: { path: "rootfs" },
    process: {
      user: { uid: 0, gid: 0 },
      args: [],
      env: [DEFAULT_PATH],
      cwd: "/",
      capabilities: {
        bounding: [...DEFAULT_CAPS],
        permitted: [...DEFAULT_CAPS],
        effective: [...DEFAULT_CAPS],
      },
      rlimits: [{ type: "RLIMIT_NOFILE", hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    mounts: [
      {
        destination: "/proc",
        type: "proc",
        source: "proc",
        options: ["nosuid", "noexec", "nodev"],
      },
      {
        destination: "/dev",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
      },
      {
        destination: "/dev/pts",
        type: "devpts",
        source: "devpts",
        options: ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
      },
      {
        destination: "/dev/shm",
        type: "tmpfs",
        source: "shm",
        options: ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
      },
      {
        destination: "/dev/mqueue",
        type: "mqueue",
        source: "mqueue",
        options: ["nosuid", "noexec", "nodev"],
      },
      {
        destination: "/sys",
        type: "sysfs",
        source: "sysfs",
        options: ["nosuid", "noexec", "nodev", "ro"],
      },
      {
        destination: "/run",
        type: "tmpfs",
        source: "tmpfs",
        options: ["nosuid", "strictatime", "mode=755", "size=65536k"],
      },
    ],
    linux: {
      namespaces: [
        { type: "pid" },
        { type: "ipc" },
        { type: "uts" },
        { type: "mount" },
        { type: "network" },
      ],
      maskedPaths: [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/sys/firmware",
        "/proc/scsi",
      ],
      readonlyPaths: [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
      ],
      cgroupsPath: `/${namespace}/${id}`,
      resources: { devices: [{ allow: false, access: "rwm" }] },
    },
  };
}

/** Shares the host's network namespace (and its resolv.conf/hosts), as `ctr run --net-host`. */
export function withHostNetwork(spec: Spec): void {
  spec.linux.namespaces = spec.linux.namespaces.filter((n) => n.type !== "network");
  for (const f of ["/etc/hosts", "/etc/resolv.conf"]) {
    spec.mounts.push({ destination: f, type: "bind", source: f, options: ["rbind", "ro"] });
  }
}

/** Adds a terminal, as `ctr run -t`. */
export function withTty(spec: Spec): void {
  spec.process.terminal = true;
  if (!spec.process.env.some((e) => e.startsWith("TERM="))) spec.process.env.push("TERM=xterm");
}

/** Replaces or adds environment variables (`K=V`). */
export function withEnv(spec: Spec, env: readonly string[]): void {
  for (const kv of env) {
    const key = kv.split("=")[0];
    const i = spec.process.env.findIndex((e) => e.split("=")[0] === key);
    if (i >= 0) spec.process.env[i] = kv;
    else spec.process.env.push(kv);
  }
}

/** The config section of an OCI image config that a spec takes from. */
export interface ImageConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  WorkingDir?: string;
}

/**
 * Applies an image's config (env, entrypoint + cmd as args, working dir, numeric user) as
 * containerd's `WithImageConfig`; `args` given by the user replace the image's Cmd.
 */
export function withImageConfig(spec: Spec, config: ImageConfig, args: readonly string[]): void {
  withEnv(spec, config.Env ?? []);
  const entry = config.Entrypoint ?? [];
  spec.process.args = args.length > 0 ? [...entry, ...args] : [...entry, ...(config.Cmd ?? [])];
  if (config.WorkingDir) spec.process.cwd = config.WorkingDir;
  if (config.User) {
    const [u, g] = config.User.split(":");
    if (/^\d+$/.test(u)) spec.process.user.uid = Number(u);
    if (g !== undefined && /^\d+$/.test(g)) spec.process.user.gid = Number(g);
  }
}

/** The spec as the bytes stored in a container's spec Any. */
export function encodeSpec(spec: Spec): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(spec));
}

/** One entry of an `/etc/passwd` file. */
export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** One entry of an `/etc/group` file. */
export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/** Parses an `/etc/passwd` file (malformed lines are skipped, as Go's `user` package). */
export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim() || line.startsWith("#")) continue;
    const f = line.split(":");
    if (f.length < 4 || !/^\d+$/.test(f[2]) || !/^\d+$/.test(f[3])) continue;
    out.push({ name: f[0], uid: Number(f[2]), gid: Number(f[3]), home: f[5] ?? "" });
  }
  return out;
}

/** Parses an `/etc/group` file (malformed lines are skipped). */
export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim() || line.startsWith("#")) continue;
    const f = line.split(":");
    if (f.length < 3 || !/^\d+$/.test(f[2])) continue;
    out.push({
      name: f[0],
      gid: Number(f[2]),
      members: (f[3] ?? "").split(",").map((m) => m.trim()).filter((m) => m),
    });
  }
  return out;
}

/**
 * Resolves `path` (absolute, inside the container) under `root` without leaving it: symlinks
 * are followed relative to `root`, as containerd's `fs.RootPath`.
 */
export async function rootPath(root: string, path: string): Promise<string> {
  const parts = path.split("/").filter((p) => p && p !== ".");
  const resolved: string[] = [];
  let hops = 0;
  while (parts.length > 0) {
    const part = parts.shift()!;
    if (part === "..") {
      resolved.pop();
      continue;
    }
    const full = `${root}/${[...resolved, part].join("/")}`;
    let target: string | undefined;
    try {
      if ((await Deno.lstat(full)).isSymlink) target = await Deno.readLink(full);
    } catch {
      // Missing: the rest is taken as is.
    }
    if (target === undefined) {
      resolved.push(part);
      continue;
    }
    if (++hops > 255) throw invalidArgument(`Too many symlinks resolving "${path}"`);
    if (target.startsWith("/")) resolved.length = 0;
    parts.unshift(...target.split("/").filter((p) => p && p !== "."));
  }
  return `${root}/${resolved.join("/")}`;
}

async function readRootFile(root: string, path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(await rootPath(root, path));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}

const MAX_ID = 2 ** 31 - 1;

function numericId(s: string): number | undefined {
  if (!/^\d+$/.test(s)) return undefined;
  const n = Number(s);
  return n <= MAX_ID ? n : undefined;
}

/**
 * Sets the process's user from `user` (`uid`, `name`, `uid:gid`, `name:group`, …) with names
 * resolved from the `/etc/passwd` and `/etc/group` under `root` (the container's rootfs), as
 * containerd's `WithUser`: a bare uid takes its gid from passwd (0 when not listed); a name
 * that is not listed is NotFound. The additional gids become those of {@link withAdditionalGids}.
 */
export async function withUser(spec: Spec, user: string, root: string): Promise<void> {
  const parts = user.split(":");
  if (parts.length > 2 || parts[0] === "") {
    throw invalidArgument(`Invalid user "${user}": expected <name|uid>[:<group|gid>]`);
  }
  const passwd = async () => parsePasswd((await readRootFile(root, "/etc/passwd")) ?? "");
  const u = spec.process.user;
  const uid = numericId(parts[0]);
  let name: string | undefined;
  if (uid !== undefined) {
    u.uid = uid;
    if (parts.length === 1) u.gid = (await passwd()).find((e) => e.uid === uid)?.gid ?? 0;
  } else {
    const entry = (await passwd()).find((e) => e.name === parts[0]);
    if (!entry) throw notFound(`Cannot find user "${parts[0]}" in the image's /etc/passwd`);
    u.uid = entry.uid;
    name = entry.name;
    if (parts.length === 1) u.gid = entry.gid;
  }
  if (parts.length === 2) {
    const gid = numericId(parts[1]);
    if (gid !== undefined) u.gid = gid;
    else {
      const groups = parseGroup((await readRootFile(root, "/etc/group")) ?? "");
      const g = groups.find((e) => e.name === parts[1]);
      if (!g) throw notFound(`Cannot find group "${parts[1]}" in the image's /etc/group`);
      u.gid = g.gid;
    }
  }
  await withAdditionalGids(spec, name ?? String(u.uid), root);
}

/**
 * Sets the process's additional gids to the groups of `/etc/group` under `root` that list
 * `user` (a name, or a uid looked up in passwd) as a member, with the primary gid first, as
 * containerd's `WithAdditionalGIDs`.
 */
export async function withAdditionalGids(spec: Spec, user: string, root: string): Promise<void> {
  let name = user;
  const uid = numericId(user);
  if (uid !== undefined) {
    const passwd = parsePasswd((await readRootFile(root, "/etc/passwd")) ?? "");
    name = passwd.find((e) => e.uid === uid)?.name ?? "";
  }
  const gids: number[] = [];
  if (name) {
    const groups = parseGroup((await readRootFile(root, "/etc/group")) ?? "");
    for (const g of groups) if (g.members.includes(name) && !gids.includes(g.gid)) gids.push(g.gid);
  }
  const primary = spec.process.user.gid;
  spec.process.user.additionalGids = gids.includes(primary) ? gids : [primary, ...gids];
}

/**
 * Parses a mount flag as `ctr run --mount`: `type=bind,src=/a,dst=/b,options=rbind:ro`
 * (`source`/`src`, `destination`/`dst`/`target`, options separated by `:`).
 */
export function parseMountFlag(flag: string): SpecMount {
  const m: SpecMount = { destination: "" };
  for (const field of flag.split(",")) {
    const eq = field.indexOf("=");
    if (eq < 0) throw invalidArgument(`Invalid mount "${flag}": expected key=value fields`);
    const key = field.slice(0, eq);
    const val = field.slice(eq + 1);
    switch (key) {
      case "type":
        m.type = val;
        break;
      case "source":
      case "src":
        m.source = val;
        break;
      case "destination":
      case "dst":
      case "target":
        m.destination = val;
        break;
      case "options":
        m.options = val.split(":").filter((o) => o);
        break;
      default:
        throw invalidArgument(`Invalid mount "${flag}": unknown key "${key}"`);
    }
  }
  if (!m.destination) throw invalidArgument(`Invalid mount "${flag}": no destination`);
  return m;
}

/** Adds mounts; one on a destination already mounted replaces it, as containerd's `WithMounts`. */
export function withMounts(spec: Spec, mounts: readonly SpecMount[]): void {
  for (const m of mounts) {
    spec.mounts = spec.mounts.filter((x) => x.destination !== m.destination);
    spec.mounts.push(m);
  }
}

/** Sets the container's hostname (it has its own UTS namespace). */
export function withHostname(spec: Spec, hostname: string): void {
  spec.hostname = hostname;
}

/** The CFS period `--cpus` uses, as ctr. */
export const CFS_PERIOD = 100000;

/** Limits the CPU time to `cpus` CPUs (CFS quota over a 100 ms period), as `ctr run --cpus`. */
export function withCpus(spec: Spec, cpus: number): void {
  if (!(cpus > 0)) throw invalidArgument(`Invalid CPU count ${cpus}: must be positive`);
  spec.linux.resources.cpu = {
    ...spec.linux.resources.cpu,
    quota: Math.trunc(cpus * CFS_PERIOD),
    period: CFS_PERIOD,
  };
}

/** Limits the memory to `bytes`, as `ctr run --memory-limit`. */
export function withMemoryLimit(spec: Spec, bytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw invalidArgument(`Invalid memory limit ${bytes}: must be a positive number of bytes`);
  }
  spec.linux.resources.memory = { ...spec.linux.resources.memory, limit: bytes };
}

/** Makes the root filesystem read-only. */
export function withReadonlyRootfs(spec: Spec): void {
  spec.root.readonly = true;
}

/** Every capability the kernel knows, by number (as `capability.List()`). */
const ALL_CAPS = [
  "CAP_CHOWN",
  "CAP_DAC_OVERRIDE",
  "CAP_DAC_READ_SEARCH",
  "CAP_FOWNER",
  "CAP_FSETID",
  "CAP_KILL",
  "CAP_SETGID",
  "CAP_SETUID",
  "CAP_SETPCAP",
  "CAP_LINUX_IMMUTABLE",
  "CAP_NET_BIND_SERVICE",
  "CAP_NET_BROADCAST",
  "CAP_NET_ADMIN",
  "CAP_NET_RAW",
  "CAP_IPC_LOCK",
  "CAP_IPC_OWNER",
  "CAP_SYS_MODULE",
  "CAP_SYS_RAWIO",
  "CAP_SYS_CHROOT",
  "CAP_SYS_PTRACE",
  "CAP_SYS_PACCT",
  "CAP_SYS_ADMIN",
  "CAP_SYS_BOOT",
  "CAP_SYS_NICE",
  "CAP_SYS_RESOURCE",
  "CAP_SYS_TIME",
  "CAP_SYS_TTY_CONFIG",
  "CAP_MKNOD",
  "CAP_LEASE",
  "CAP_AUDIT_WRITE",
  "CAP_AUDIT_CONTROL",
  "CAP_SETFCAP",
  "CAP_MAC_OVERRIDE",
  "CAP_MAC_ADMIN",
  "CAP_SYSLOG",
  "CAP_WAKE_ALARM",
  "CAP_BLOCK_SUSPEND",
  "CAP_AUDIT_READ",
  "CAP_PERFMON",
  "CAP_BPF",
  "CAP_CHECKPOINT_RESTORE",
];

/**
 * The capabilities of this process (`CapEff` of `/proc/self/status`, known names only), as
 * containerd's `capabilities.Current()`: a privileged container gets what its creator has.
 */
export function currentCapabilities(status?: string): string[] {
  let eff = (1n << BigInt(ALL_CAPS.length)) - 1n;
  try {
    status ??= Deno.readTextFileSync("/proc/self/status");
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
    if (m) eff = BigInt("0x" + m[1]);
  } catch {
    // Unknown: every capability named above.
  }
  return ALL_CAPS.filter((_, i) => (eff >> BigInt(i)) & 1n);
}

/**
 * Makes the container privileged, as `ctr run --privileged` (containerd's `WithPrivileged`,
 * `WithAllDevicesAllowed`, `WithHostDevices`): every capability this process has, no masked or read-only
 * paths, writable sysfs and cgroupfs, every device allowed and the host's devices created.
 */
export function withPrivileged(
  spec: Spec,
  hostDevices: LinuxDevice[] = [],
  caps: string[] = currentCapabilities(),
): void {
  spec.process.capabilities = {
    bounding: [...caps],
    permitted: [...caps],
    effective: [...caps],
  };
  spec.linux.maskedPaths = [];
  spec.linux.readonlyPaths = [];
  for (const m of spec.mounts) {
    if (m.type === "sysfs" || m.type === "cgroup") {
      m.options = (m.options ?? []).filter((o) => o !== "ro");
    }
  }
  spec.linux.resources.devices = [{ allow: true, access: "rwm" }];
  spec.linux.devices = [...(spec.linux.devices ?? []), ...hostDevices];
}

const SKIPPED_DEV_DIRS = new Set(["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"]);

/** The host's device nodes under `/dev`, as containerd's `HostDevices`. */
export function hostDevices(dir = "/dev"): LinuxDevice[] {
  const out: LinuxDevice[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) {
      if (!SKIPPED_DEV_DIRS.has(e.name)) out.push(...hostDevices(path));
      continue;
    }
    if (e.name === "console" || e.isSymlink) continue;
    let st: Deno.FileInfo;
    try {
      st = Deno.lstatSync(path);
    } catch {
      continue;
    }
    if (!st.isCharDevice && !st.isBlockDevice) continue;
    const rdev = st.rdev ?? 0;
    out.push({
      path,
      type: st.isCharDevice ? "c" : "b",
      major: Number((BigInt(rdev) >> 8n) & 0xfffn),
      minor: (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
      fileMode: (st.mode ?? 0) & 0o7777,
      uid: st.uid ?? 0,
      gid: st.gid ?? 0,
    });
  }
  return out;
}
