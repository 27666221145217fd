/**
 * The shim's `Stats`: a container's cgroup statistics as containerd 1.6's runc shim returns
 * them — `io.containerd.cgroups.v1.Metrics` on legacy and hybrid hosts (containerd/cgroups'
 * `cgroup.Stat(IgnoreNotExist)`), `io.containerd.cgroups.v2.Metrics` on unified hosts
 * (`Manager.Stat()`), packed in an `Any` whose type URL is the bare message name, as gogo's
 * `typeurl.MarshalAny` writes it and ctr's `typeurl.UnmarshalAny` looks it up.
 *
 * Like containerd, a v1 statistic whose file does not exist is left out rather than failing the
 * call; unlike containerd, which stops reading a subsystem at its first missing file, the other
 * files of the subsystem are still read (a host without swap accounting still reports the
 * kernel memory).
 *
 * @module
 */

import { create, toBinary } from "@bufbuild/protobuf";
import { type Any, AnySchema } from "@bufbuild/protobuf/wkt";
import * as v1 from "../api/gen/io/containerd/cgroups/v1/metrics_pb.ts";
import * as v2 from "../api/gen/io/containerd/cgroups/v2/metrics_pb.ts";
import {
  type Cgroup,
  hugePageSize,
  keyed,
  parseBlkio,
  parseCpuacctStat,
  parseFlatKeyed,
  parseIoStat,
  parsePartitions,
  parsePerCpu,
  parseRdma,
  parseSingle,
  parseUint,
  UINT64_MAX,
} from "./cgroups.ts";

/** Where the host files the statistics need are (tests point them at fixtures). */
export interface StatsHost {
  /** `/proc` (for `partitions`). */
  proc: string;
  /** `/sys/kernel/mm/hugepages` (the v1 huge page sizes). */
  hugepages: string;
}

/** The names of a message's uint64 fields. */
type Uint64Fields<T> = { [K in keyof T]-?: T[K] extends bigint ? K : never }[keyof T];

const HOST: StatsHost = { proc: "/proc", hugepages: "/sys/kernel/mm/hugepages" };

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}

/** Runs a subsystem's reader; a missing file leaves the rest of it out (`IgnoreNotExist`). */
async function ignoreNotExist(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}

/** memory.stat keys of each v1 `MemoryStat` field (containerd's `parseStats`). */
const V1_MEMORY_STAT: ReadonlyArray<readonly [Uint64Fields<v1.MemoryStat>, string]> = [
  ["cache", "cache"],
  ["rss", "rss"],
  ["rssHuge", "rss_huge"],
  ["mappedFile", "mapped_file"],
  ["dirty", "dirty"],
  ["writeback", "writeback"],
  ["pgPgIn", "pgpgin"],
  ["pgPgOut", "pgpgout"],
  ["pgFault", "pgfault"],
  ["pgMajFault", "pgmajfault"],
  ["inactiveAnon", "inactive_anon"],
  ["activeAnon", "active_anon"],
  ["inactiveFile", "inactive_file"],
  ["activeFile", "active_file"],
  ["unevictable", "unevictable"],
  ["hierarchicalMemoryLimit", "hierarchical_memory_limit"],
  ["hierarchicalSwapLimit", "hierarchical_memsw_limit"],
  ["totalCache", "total_cache"],
  ["totalRss", "total_rss"],
  ["totalRssHuge", "total_rss_huge"],
  ["totalMappedFile", "total_mapped_file"],
  ["totalDirty", "total_dirty"],
  ["totalWriteback", "total_writeback"],
  ["totalPgPgIn", "total_pgpgin"],
  ["totalPgPgOut", "total_pgpgout"],
  ["totalPgFault", "total_pgfault"],
  ["totalPgMajFault", "total_pgmajfault"],
  ["totalInactiveAnon", "total_inactive_anon"],
  ["totalActiveAnon", "total_active_anon"],
  ["totalInactiveFile", "total_inactive_file"],
  ["totalActiveFile", "total_active_file"],
  ["totalUnevictable", "total_unevictable"],
];

/** The numeric fields of a v1 `MemoryStat` from the text of `memory.stat`. */
export function memoryStatV1(text: string): Record<Uint64Fields<v1.MemoryStat>, bigint> {
  const raw = parseFlatKeyed(text);
  return Object.fromEntries(
    V1_MEMORY_STAT.map(([field, key]) => [field, keyed(raw, key)]),
  ) as Record<Uint64Fields<v1.MemoryStat>, bigint>;
}

/** The v1 `Throttle` from the text of `cpu.stat`. */
export function throttleV1(
  text: string,
): { periods: bigint; throttledPeriods: bigint; throttledTime: bigint } {
  const raw = parseFlatKeyed(text);
  return {
    periods: keyed(raw, "nr_periods"),
    throttledPeriods: keyed(raw, "nr_throttled"),
    throttledTime: keyed(raw, "throttled_time"),
  };
}

type Readers = Record<string, (dir: string, m: v1.Metrics, host: StatsHost) => Promise<void>>;

/** Each v1 subsystem with statistics, as containerd/cgroups' `Stat` of its controller. */
const V1_READERS: Readers = {
  async pids(dir, m) {
    const current = parseUint((await Deno.readTextFile(`${dir}/pids.current`)).trim());
    // v1 reports an unlimited pids.max as 0
    const limit = parseSingle(await Deno.readTextFile(`${dir}/pids.max`), 0n);
    m.pids = create(v1.PidsStatSchema, { current, limit });
  },

  async cpu(dir, m) {
    const t = throttleV1(await Deno.readTextFile(`${dir}/cpu.stat`));
    Object.assign(m.cpu!.throttling!, t);
  },

  async cpuacct(dir, m) {
    const { user, kernel } = parseCpuacctStat(await Deno.readTextFile(`${dir}/cpuacct.stat`));
    const total = parseUint((await Deno.readTextFile(`${dir}/cpuacct.usage`)).trim());
    const perCpu = parsePerCpu(await Deno.readTextFile(`${dir}/cpuacct.usage_percpu`));
    Object.assign(m.cpu!.usage!, { total, user, kernel, perCpu });
  },

  async memory(dir, m) {
    const memory = create(v1.MemoryStatSchema, {
      ...memoryStatV1(await Deno.readTextFile(`${dir}/memory.stat`)),
      usage: {},
      swap: {},
      kernel: {},
      kernelTcp: {},
    });
    m.memory = memory;
    const oom = await readOptional(`${dir}/memory.oom_control`);
    if (oom !== undefined) {
      const raw = parseFlatKeyed(oom);
      m.memoryOomControl = create(v1.MemoryOomControlSchema, {
        oomKillDisable: keyed(raw, "oom_kill_disable"),
        underOom: keyed(raw, "under_oom"),
        oomKill: keyed(raw, "oom_kill"),
      });
    }
    const modules = [
      ["memory", memory.usage!],
      ["memory.memsw", memory.swap!],
      ["memory.kmem", memory.kernel!],
      ["memory.kmem.tcp", memory.kernelTcp!],
    ] as const;
    const files = [
      ["usage_in_bytes", "usage"],
      ["max_usage_in_bytes", "max"],
      ["failcnt", "failcnt"],
      ["limit_in_bytes", "limit"],
    ] as const;
    await Promise.all(modules.flatMap(([prefix, entry]) =>
      files.map(async ([file, field]) => {
        const text = await readOptional(`${dir}/${prefix}.${file}`);
        if (text !== undefined) entry[field] = parseUint(text.trim());
      })
    ));
  },

  async blkio(dir, m, host) {
    const blkio = create(v1.BlkIOStatSchema);
    m.blkio = blkio;
    const devices = parsePartitions(await Deno.readTextFile(`${host.proc}/partitions`));
    const read = async (name: string, into: v1.BlkIOEntry[]) => {
      const text = await readOptional(`${dir}/blkio.${name}`);
      if (text === undefined) return;
      for (const e of parseBlkio(text, devices)) into.push(create(v1.BlkIOEntrySchema, e));
    };
    if (await readOptional(`${dir}/blkio.io_serviced_recursive`) !== undefined) {
      await read("sectors_recursive", blkio.sectorsRecursive);
      await read("io_service_bytes_recursive", blkio.ioServiceBytesRecursive);
      await read("io_serviced_recursive", blkio.ioServicedRecursive);
      await read("io_queued_recursive", blkio.ioQueuedRecursive);
      await read("io_service_time_recursive", blkio.ioServiceTimeRecursive);
      await read("io_wait_time_recursive", blkio.ioWaitTimeRecursive);
      await read("io_merged_recursive", blkio.ioMergedRecursive);
      await read("time_recursive", blkio.ioTimeRecursive);
      const lists = [
        blkio.sectorsRecursive,
        blkio.ioServiceBytesRecursive,
        blkio.ioServicedRecursive,
        blkio.ioQueuedRecursive,
        blkio.ioServiceTimeRecursive,
        blkio.ioWaitTimeRecursive,
        blkio.ioMergedRecursive,
        blkio.ioTimeRecursive,
      ];
      if (lists.some((l) => l.length > 0)) return;
    }
    // no CFQ/BFQ statistics: the throttling layer's counters
    await read("throttle.io_serviced", blkio.ioServicedRecursive);
    await read("throttle.io_service_bytes", blkio.ioServiceBytesRecursive);
  },

  async hugetlb(dir, m, host) {
    const sizes: string[] = [];
    for await (const e of Deno.readDir(host.hugepages)) sizes.push(hugePageSize(e.name));
    sizes.sort((a, b) => a < b ? -1 : a > b ? 1 : 0);
    for (const pagesize of sizes) {
      const value = async (name: string) =>
        parseUint((await Deno.readTextFile(`${dir}/hugetlb.${pagesize}.${name}`)).trim());
      m.hugetlb.push(create(v1.HugetlbStatSchema, {
        pagesize,
        usage: await value("usage_in_bytes"),
        max: await value("max_usage_in_bytes"),
        failcnt: await value("failcnt"),
      }));
    }
  },

  async rdma(dir, m) {
    const current = await Deno.readTextFile(`${dir}/rdma.current`);
    const max = await Deno.readTextFile(`${dir}/rdma.max`);
    // a device removed between the two reads: no statistics
    if (current.split("\n").length !== max.split("\n").length) return;
    m.rdma = create(v1.RdmaStatSchema, { current: parseRdma(current), limit: parseRdma(max) });
  },
};

/**
 * The v1 statistics of a container whose subsystems are in `paths` (subsystem → directory).
 *
 * @throws {Error} when a file exists but cannot be read or parsed
 */
export async function statsV1(
  paths: ReadonlyMap<string, string>,
  host: StatsHost = HOST,
): Promise<v1.Metrics> {
  const m = create(v1.MetricsSchema, { cpu: { usage: {}, throttling: {} } });
  await Promise.all(
    Object.entries(V1_READERS).map(([subsystem, read]) => {
      const dir = paths.get(subsystem);
      return dir === undefined ? undefined : ignoreNotExist(() => read(dir, m, host));
    }),
  );
  return m;
}

/** A v2 single-value file: 0 when absent or unreadable, `max` as 2^64-1. */
async function readValueV2(path: string): Promise<bigint> {
  try {
    return parseSingle(await Deno.readTextFile(path), UINT64_MAX);
  } catch {
    return 0n;
  }
}

/** memory.stat keys of the v2 `MemoryStat` fields (containerd's `Manager.Stat`). */
const V2_MEMORY_STAT: ReadonlyArray<readonly [Uint64Fields<v2.MemoryStat>, string]> = [
  ["anon", "anon"],
  ["file", "file"],
  ["kernelStack", "kernel_stack"],
  ["slab", "slab"],
  ["sock", "sock"],
  ["shmem", "shmem"],
  ["fileMapped", "file_mapped"],
  ["fileDirty", "file_dirty"],
  ["fileWriteback", "file_writeback"],
  ["anonThp", "anon_thp"],
  ["inactiveAnon", "inactive_anon"],
  ["activeAnon", "active_anon"],
  ["inactiveFile", "inactive_file"],
  ["activeFile", "active_file"],
  ["unevictable", "unevictable"],
  ["slabReclaimable", "slab_reclaimable"],
  ["slabUnreclaimable", "slab_unreclaimable"],
  ["pgfault", "pgfault"],
  ["pgmajfault", "pgmajfault"],
  ["workingsetRefault", "workingset_refault"],
  ["workingsetActivate", "workingset_activate"],
  ["workingsetNodereclaim", "workingset_nodereclaim"],
  ["pgrefill", "pgrefill"],
  ["pgscan", "pgscan"],
  ["pgsteal", "pgsteal"],
  ["pgactivate", "pgactivate"],
  ["pgdeactivate", "pgdeactivate"],
  ["pglazyfree", "pglazyfree"],
  ["pglazyfreed", "pglazyfreed"],
  ["thpFaultAlloc", "thp_fault_alloc"],
  ["thpCollapseAlloc", "thp_collapse_alloc"],
];

/** The v2 huge page statistics: `hugetlb.<size>.current` and `.max` files of `dir`. */
async function hugetlbV2(dir: string): Promise<v2.HugeTlbStat[]> {
  const bySize = new Map<string, v2.HugeTlbStat>();
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch {
    return [];
  }
  for (const { name } of entries) {
    if (!name.includes("hugetlb") || !(name.endsWith("max") || name.endsWith("current"))) {
      continue;
    }
    const parts = name.split(".");
    const pagesize = parts[1] ?? "";
    const stat = bySize.get(pagesize) ?? create(v2.HugeTlbStatSchema, { pagesize });
    bySize.set(pagesize, stat);
    let value: bigint;
    try {
      value = parseSingle(await Deno.readTextFile(`${dir}/${name}`), UINT64_MAX);
    } catch {
      continue;
    }
    if (parts[2] === "max") stat.max = value;
    else if (parts[2] === "current") stat.current = value;
  }
  return [...bySize.values()].sort((a, b) =>
    a.pagesize < b.pagesize ? -1 : a.pagesize > b.pagesize ? 1 : 0
  );
}

/**
 * The v2 statistics of the cgroup directory `dir`.
 *
 * @throws {Deno.errors.NotFound} when the cgroup is gone (no `cgroup.controllers`)
 * @throws {Error} when a `cpu.stat`, `memory.stat` or `memory.events` line is malformed
 */
export async function statsV2(dir: string): Promise<v2.Metrics> {
  const controllers = (await Deno.readTextFile(`${dir}/cgroup.controllers`)).trim().split(/\s+/);
  const out = new Map<string, bigint | string>();
  for (const c of ["cpu", "memory"]) {
    if (!controllers.includes(c)) continue;
    const text = await readOptional(`${dir}/${c}.stat`);
    if (text !== undefined) { for (const [k, v] of parseFlatKeyed(text)) out.set(k, v); }
  }
  const pid = async (name: string) => {
    const text = await readOptional(`${dir}/${name}`);
    if (text === undefined) return 0n;
    const s = text.trim();
    if (s === "max") return UINT64_MAX;
    try {
      return parseUint(s);
    } catch {
      return 0n;
    }
  };
  const eventsText = await readOptional(`${dir}/memory.events`);
  const events = eventsText === undefined ? new Map() : parseFlatKeyed(eventsText);
  const [current, limit, usage, usageLimit, swapUsage, swapLimit] = await Promise.all([
    pid("pids.current"),
    pid("pids.max"),
    readValueV2(`${dir}/memory.current`),
    readValueV2(`${dir}/memory.max`),
    readValueV2(`${dir}/memory.swap.current`),
    readValueV2(`${dir}/memory.swap.max`),
  ]);
  const rdma = async (name: string) => parseRdma(await readOptional(`${dir}/${name}`) ?? "");
  return create(v2.MetricsSchema, {
    pids: { current, limit },
    cpu: {
      usageUsec: keyed(out, "usage_usec"),
      userUsec: keyed(out, "user_usec"),
      systemUsec: keyed(out, "system_usec"),
      nrPeriods: keyed(out, "nr_periods"),
      nrThrottled: keyed(out, "nr_throttled"),
      throttledUsec: keyed(out, "throttled_usec"),
    },
    memory: {
      ...Object.fromEntries(V2_MEMORY_STAT.map(([field, key]) => [field, keyed(out, key)])),
      usage,
      usageLimit,
      swapUsage,
      swapLimit,
    },
    memoryEvents: events.size === 0 ? undefined : {
      low: keyed(events, "low"),
      high: keyed(events, "high"),
      max: keyed(events, "max"),
      oom: keyed(events, "oom"),
      oomKill: keyed(events, "oom_kill"),
    },
    io: { usage: parseIoStat(await readOptional(`${dir}/io.stat`) ?? "") },
    rdma: { current: await rdma("rdma.current"), limit: await rdma("rdma.max") },
    hugetlb: await hugetlbV2(dir),
  });
}

/**
 * A container's statistics as the `Any` of `StatsResponse.stats`: type URL
 * `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`.
 */
export async function cgroupStats(cgroup: Cgroup, host: StatsHost = HOST): Promise<Any> {
  if (cgroup.version === 1) {
    const m = await statsV1(cgroup.paths, host);
    return create(AnySchema, {
      typeUrl: v1.MetricsSchema.typeName,
      value: toBinary(v1.MetricsSchema, m),
    });
  }
  const m = await statsV2(cgroup.path);
  return create(AnySchema, {
    typeUrl: v2.MetricsSchema.typeName,
    value: toBinary(v2.MetricsSchema, m),
  });
}
