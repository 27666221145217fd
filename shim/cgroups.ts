/**
 * Where a container's cgroups are, and the parsers of the cgroup files its statistics come
 * from, as containerd/cgroups (v1.0.4, what containerd 1.6's runc shim uses) reads them.
 *
 * The host's layout follows containerd's `cgroups.Mode()`: unified when `/sys/fs/cgroup` is a
 * cgroup2 mount; otherwise legacy, or hybrid when `/sys/fs/cgroup/unified` is cgroup2 (both
 * are served the v1 statistics). The container's cgroups are read from `/proc/<init pid>/cgroup`
 * (containerd's `PidPath`), each path made relative to the root of the mount that holds its
 * hierarchy (`/proc/self/mountinfo`), so nested cgroup mounts resolve. When the init is gone,
 * the bundle's `linux.cgroupsPath` is resolved the way runc resolves it for cgroupfs.
 *
 * Values are `bigint` (the messages' uint64); parsers follow containerd's: a negative number
 * reads as 0, `max` as the caller decides.
 *
 * @module
 */

/** The cgroup layout of the host (containerd's `CGMode`). */
export type CgroupMode = "unified" | "hybrid" | "legacy" | "unavailable";

/** The mount point of the cgroup hierarchies. */
export const CGROUP_ROOT = "/sys/fs/cgroup";

/** One line of `/proc/<pid>/mountinfo`. */
export interface MountInfo {
  /** The path inside the filesystem that is mounted (field 4). */
  root: string;
  /** Where it is mounted (field 5). */
  mountPoint: string;
  fsType: string;
  /** The per-superblock options, e.g. `["rw", "cpu", "cpuacct"]` for a v1 hierarchy. */
  superOptions: string[];
}

/** A container's cgroups: one directory per v1 subsystem, or its unified (v2) directory. */
export type Cgroup =
  | { version: 1; paths: Map<string, string> }
  | { version: 2; path: string };

/** What each line of `/proc/<pid>/cgroup` says: v1 subsystems' paths and the unified path. */
export interface ProcCgroups {
  /** Subsystem (`cpu`, `memory`, `name=systemd`, …) → path inside its hierarchy. */
  v1: Map<string, string>;
  /** The path in the unified hierarchy (the `0::` line), if any. */
  unified?: string;
}

const MAX_UINT64 = (1n << 64n) - 1n;

/** The largest uint64, what cgroup v2 statistics report for `max`. */
export const UINT64_MAX: bigint = MAX_UINT64;

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)));
}

/** Parses `/proc/<pid>/mountinfo`. */
export function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const fields = line.split(" ");
    const dash = fields.indexOf("-", 6);
    if (dash < 0 || dash + 3 >= fields.length) {
      throw new Error(`Cannot parse the mountinfo line "${line}"`);
    }
    out.push({
      root: unescapeMount(fields[3]),
      mountPoint: unescapeMount(fields[4]),
      fsType: fields[dash + 1],
      superOptions: fields[dash + 3].split(","),
    });
  }
  return out;
}

/** The host's cgroup layout from its mount table, as containerd's `cgroups.Mode()`. */
export function cgroupMode(mounts: readonly MountInfo[], root = CGROUP_ROOT): CgroupMode {
  // the last mount on a path is the visible one
  const at = (path: string) => mounts.findLast((m) => m.mountPoint === path);
  const top = at(root);
  if (top?.fsType === "cgroup2") return "unified";
  if (top === undefined && !mounts.some((m) => m.mountPoint.startsWith(`${root}/`))) {
    return "unavailable";
  }
  return at(`${root}/unified`)?.fsType === "cgroup2" ? "hybrid" : "legacy";
}

/** Parses `/proc/<pid>/cgroup` (`hierarchy-id:controllers:path` lines). */
export function parseProcCgroup(text: string): ProcCgroups {
  const out: ProcCgroups = { v1: new Map() };
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const first = line.indexOf(":");
    const second = line.indexOf(":", first + 1);
    if (first < 0 || second < 0) throw new Error(`Cannot parse the cgroup line "${line}"`);
    const [id, controllers, path] = [
      line.slice(0, first),
      line.slice(first + 1, second),
      line.slice(second + 1),
    ];
    if (id === "0" && controllers === "") {
      out.unified = path;
      continue;
    }
    for (const c of controllers.split(",")) if (c !== "") out.v1.set(c, path);
  }
  return out;
}

/** The v1 subsystems a mount holds: its super options that name controllers. */
function subsystemsOf(m: MountInfo): string[] {
  return m.superOptions.filter((o) =>
    o.startsWith("name=") ||
    /^(cpuset|cpu|cpuacct|blkio|memory|devices|freezer|net_cls|perf_event|net_prio|hugetlb|pids|rdma|misc)$/
      .test(o)
  );
}

/** `path` (inside a hierarchy) as a directory under the mount whose root is `mountRoot`. */
function underMount(mountPoint: string, mountRoot: string, path: string): string {
  let rel = path;
  if (mountRoot !== "/" && (path === mountRoot || path.startsWith(`${mountRoot}/`))) {
    rel = path.slice(mountRoot.length);
  }
  return `${mountPoint}/${rel}`.replace(/\/+/g, "/").replace(/(.)\/$/, "$1");
}

/**
 * A cgroup from a process's `/proc/<pid>/cgroup` text and the mount table: per v1 subsystem
 * the directory holding it, or the unified directory on a unified host.
 *
 * @throws {Error} when the host has no cgroups or the process is in none of them
 */
export function cgroupFrom(procCgroup: string, mounts: readonly MountInfo[]): Cgroup {
  const mode = cgroupMode(mounts);
  const proc = parseProcCgroup(procCgroup);
  if (mode === "unavailable") throw new Error("The host has no cgroup hierarchy mounted");
  if (mode === "unified") {
    if (proc.unified === undefined) throw new Error("The process is in no cgroup v2 group");
    const m = mounts.findLast((m) => m.mountPoint === CGROUP_ROOT)!;
    return { version: 2, path: underMount(m.mountPoint, m.root, proc.unified) };
  }
  const paths = new Map<string, string>();
  for (const m of mounts) {
    if (m.fsType !== "cgroup") continue;
    for (const s of subsystemsOf(m)) {
      const p = proc.v1.get(s);
      if (p !== undefined) paths.set(s, underMount(m.mountPoint, m.root, p));
    }
  }
  if (paths.size === 0) throw new Error("The process is in no cgroup v1 hierarchy");
  return { version: 1, paths };
}

/**
 * A cgroup from the spec's `linux.cgroupsPath` (for when the init process is gone), resolved
 * as runc's cgroupfs driver does: an absolute path is under each hierarchy's mount point; a
 * relative one under the cgroups of `selfCgroup` (the shim's own: runc runs in it).
 * Systemd-style paths (`slice:prefix:name`) are not resolved.
 */
export function cgroupFromSpec(
  cgroupsPath: string,
  mounts: readonly MountInfo[],
  selfCgroup: string,
): Cgroup | undefined {
  if (cgroupsPath === "" || cgroupsPath.includes(":")) return undefined;
  const self = parseProcCgroup(selfCgroup);
  const mode = cgroupMode(mounts);
  const resolve = (m: MountInfo, own: string | undefined) => {
    if (cgroupsPath.startsWith("/")) return underMount(m.mountPoint, "/", cgroupsPath);
    return underMount(underMount(m.mountPoint, m.root, own ?? m.root), "/", cgroupsPath);
  };
  if (mode === "unavailable") return undefined;
  if (mode === "unified") {
    const m = mounts.findLast((m) => m.mountPoint === CGROUP_ROOT)!;
    return { version: 2, path: resolve(m, self.unified) };
  }
  const paths = new Map<string, string>();
  for (const m of mounts) {
    if (m.fsType !== "cgroup") continue;
    for (const s of subsystemsOf(m)) paths.set(s, resolve(m, self.v1.get(s)));
  }
  return paths.size === 0 ? undefined : { version: 1, paths };
}

/**
 * The cgroup of a running process: `/proc/<pid>/cgroup` against `/proc/self/mountinfo`.
 *
 * @throws {Deno.errors.NotFound} when the process is gone
 */
export async function loadCgroup(pid: number, proc = "/proc"): Promise<Cgroup> {
  const [cgroup, mountinfo] = await Promise.all([
    Deno.readTextFile(`${proc}/${pid}/cgroup`),
    Deno.readTextFile(`${proc}/self/mountinfo`),
  ]);
  return cgroupFrom(cgroup, parseMountinfo(mountinfo));
}

// ---------------------------------------------------------------------------------------------
// File parsers.

/**
 * A cgroup number as containerd's `parseUint`: decimal uint64; a negative number is 0.
 *
 * @throws {Error} for anything else
 */
export function parseUint(s: string): bigint {
  if (/^\+?\d+$/.test(s)) {
    const v = BigInt(s);
    if (v <= MAX_UINT64) return v;
  } else if (/^-\d+$/.test(s)) {
    return 0n;
  }
  throw new Error(`Cannot parse "${s}" as an unsigned integer`);
}

/** A single-value file (`memory.limit_in_bytes`, `pids.current`…); `max` gives `max`. */
export function parseSingle(text: string, max: bigint): bigint {
  const s = text.trim();
  return s === "max" ? max : parseUint(s);
}

/**
 * A flat keyed file (`memory.stat`, `cpu.stat`, `memory.oom_control`, `memory.events`): one
 * `key value` per line. Values that are no number (cgroup v2's `max`) stay strings.
 *
 * @throws {Error} for a line that is not two fields
 */
export function parseFlatKeyed(text: string): Map<string, bigint | string> {
  const out = new Map<string, bigint | string>();
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const parts = line.trim().split(/\s+/);
    if (parts.length !== 2) throw new Error(`Cannot parse the line "${line}": not "key value"`);
    let v: bigint | string;
    try {
      v = parseUint(parts[1]);
    } catch {
      v = parts[1];
    }
    out.set(parts[0], v);
  }
  return out;
}

/** A value of a flat keyed file, 0 when absent or not a number. */
export function keyed(values: ReadonlyMap<string, bigint | string>, key: string): bigint {
  const v = values.get(key);
  return typeof v === "bigint" ? v : 0n;
}

/** containerd's clock ticks per second (`_SC_CLK_TCK`, constant on Linux). */
const CLOCK_TICKS = 100n;

/**
 * `cpuacct.stat` (`user N` / `system N`, in clock ticks) as nanoseconds.
 *
 * @throws {Error} when the file does not have exactly those two lines
 */
export function parseCpuacctStat(text: string): { user: bigint; kernel: bigint } {
  const f = text.trim().split(/\s+/);
  if (f.length !== 4 || f[0] !== "user" || f[2] !== "system") {
    throw new Error(`Cannot parse cpuacct.stat: expected "user N system N", got "${text}"`);
  }
  return {
    user: parseUint(f[1]) * 1_000_000_000n / CLOCK_TICKS,
    kernel: parseUint(f[3]) * 1_000_000_000n / CLOCK_TICKS,
  };
}

/** `cpuacct.usage_percpu`: nanoseconds per CPU. */
export function parsePerCpu(text: string): bigint[] {
  return text.trim().split(/\s+/).filter((s) => s !== "").map(parseUint);
}

/** `/proc/partitions`: `major:minor` → `/dev/<name>` (the first name of each device). */
export function parsePartitions(text: string): Map<string, string> {
  const out = new Map<string, string>();
  const lines = text.split("\n").slice(2);
  for (const line of lines) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4) continue;
    const key = `${parseUint(f[0])}:${parseUint(f[1])}`;
    if (!out.has(key)) out.set(key, `/dev/${f[3]}`);
  }
  return out;
}

/** One line of a v1 blkio file. */
export interface BlkioLine {
  op: string;
  device: string;
  major: bigint;
  minor: bigint;
  value: bigint;
}

/**
 * A v1 blkio statistics file (`8:0 Read 4096` or `8:0 4096` lines, `Total N` skipped), with
 * device names from {@linkcode parsePartitions}.
 *
 * @throws {Error} for a malformed line
 */
export function parseBlkio(text: string, devices: ReadonlyMap<string, string>): BlkioLine[] {
  const out: BlkioLine[] = [];
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    const f = line.split(/[ :]+/).filter((s) => s !== "");
    if (f.length < 3) {
      if (f.length === 2 && f[0] === "Total") continue;
      throw new Error(`Cannot parse the blkio line "${line}"`);
    }
    const major = parseUint(f[0]);
    const minor = parseUint(f[1]);
    const op = f.length === 4 ? f[2] : "";
    const value = parseUint(f[f.length === 4 ? 3 : 2]);
    out.push({ op, device: devices.get(`${major}:${minor}`) ?? "", major, minor, value });
  }
  return out;
}

/** One device of cgroup v2's `io.stat`. */
export interface IoStatLine {
  major: bigint;
  minor: bigint;
  rbytes: bigint;
  wbytes: bigint;
  rios: bigint;
  wios: bigint;
}

/** cgroup v2's `io.stat` (`8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` lines). */
export function parseIoStat(text: string): IoStatLine[] {
  const out: IoStatLine[] = [];
  for (const line of text.split("\n")) {
    const parts = line.split(" ");
    if (parts.length < 2) continue;
    const mm = parts[0].split(":");
    if (mm.length !== 2 || !/^\d+$/.test(mm[0]) || !/^\d+$/.test(mm[1])) continue;
    const e: IoStatLine = {
      major: BigInt(mm[0]),
      minor: BigInt(mm[1]),
      rbytes: 0n,
      wbytes: 0n,
      rios: 0n,
      wios: 0n,
    };
    for (const kv of parts.slice(1)) {
      const [k, v, ...rest] = kv.split("=");
      if (v === undefined || rest.length > 0 || !/^\d+$/.test(v)) continue;
      if (k === "rbytes" || k === "wbytes" || k === "rios" || k === "wios") e[k] = BigInt(v);
    }
    out.push(e);
  }
  return out;
}

/** One device of an `rdma.current`/`rdma.max` file. */
export interface RdmaLine {
  device: string;
  hcaHandles: number;
  hcaObjects: number;
}

/** `rdma.current` / `rdma.max` (`mlx4_0 hca_handle=2 hca_object=2000`; `max` is 2^32-1). */
export function parseRdma(text: string): RdmaLine[] {
  const out: RdmaLine[] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length !== 3) continue;
    const e: RdmaLine = { device: f[0], hcaHandles: 0, hcaObjects: 0 };
    for (const kv of f.slice(1)) {
      const [k, v, ...rest] = kv.split("=");
      if (v === undefined || rest.length > 0) continue;
      let n: number;
      if (v === "max") n = 0xffffffff;
      else {
        try {
          const b = parseUint(v);
          if (b > 0xffffffffn) continue;
          n = Number(b);
        } catch {
          continue;
        }
      }
      if (k === "hca_handle") e.hcaHandles = n;
      else if (k === "hca_object") e.hcaObjects = n;
    }
    out.push(e);
  }
  return out;
}

/**
 * The page size names of `/sys/kernel/mm/hugepages` entries (`hugepages-2048kB` → `2MB`), as
 * containerd's `hugePageSizes` (go-units' `CustomSize("%g%s", bytes, 1024, …)`).
 */
export function hugePageSize(dirName: string): string {
  const m = /^hugepages-(\d+)([kKmMgG]?)[bB]?$/.exec(dirName);
  if (!m) throw new Error(`Cannot parse the huge page size "${dirName}"`);
  const mult: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
  let size = Number(m[1]) * mult[m[2].toLowerCase()];
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (size >= 1024 && i < units.length - 1) {
    size /= 1024;
    i++;
  }
  return `${Number(size.toPrecision(6))}${units[i]}`;
}
