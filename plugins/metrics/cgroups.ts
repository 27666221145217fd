/**
 * Per-task cgroup metrics with containerd 1.6's names and labels (`metrics/cgroups/v1` and
 * `v2`): `container_<name>_<unit>{container_id, namespace, …}`, decoded from the Any a shim's
 * Stats returns.
 *
 * @module
 */

import { fromBinary } from "@bufbuild/protobuf";
import {
  type BlkIOEntry,
  type Metrics as V1Metrics,
  MetricsSchema as V1Schema,
} from "../../api/gen/io/containerd/cgroups/v1/metrics_pb.ts";
import {
  type Metrics as V2Metrics,
  MetricsSchema as V2Schema,
} from "../../api/gen/io/containerd/cgroups/v2/metrics_pb.ts";
import type { Family } from "./registry.ts";

/** Collects samples into families, in first-seen order. */
export class FamilySet {
  readonly #families = new Map<string, Family>();

  add(
    name: string,
    help: string,
    labels: Record<string, string>,
    value: number | bigint | undefined,
    type: Family["type"] = "gauge",
  ): void {
    if (value === undefined) return;
    let f = this.#families.get(name);
    if (!f) {
      f = { name, help, type, samples: [] };
      this.#families.set(name, f);
    }
    f.samples.push({ labels, value: Number(value) });
  }

  families(): Family[] {
    return [...this.#families.values()];
  }
}

const V1_MEMORY: [string, keyof NonNullable<V1Metrics["memory"]>][] = [
  ["cache", "cache"],
  ["rss", "rss"],
  ["rss_huge", "rssHuge"],
  ["mapped_file", "mappedFile"],
  ["dirty", "dirty"],
  ["writeback", "writeback"],
  ["inactive_anon", "inactiveAnon"],
  ["active_anon", "activeAnon"],
  ["inactive_file", "inactiveFile"],
  ["active_file", "activeFile"],
  ["unevictable", "unevictable"],
  ["hierarchical_memory_limit", "hierarchicalMemoryLimit"],
  ["hierarchical_memsw_limit", "hierarchicalSwapLimit"],
];

const V1_BLKIO: [string, string, keyof NonNullable<V1Metrics["blkio"]>][] = [
  ["io_merged_recursive", "total", "ioMergedRecursive"],
  ["io_queued_recursive", "total", "ioQueuedRecursive"],
  ["io_service_bytes_recursive", "bytes", "ioServiceBytesRecursive"],
  ["io_service_time_recursive", "total", "ioServiceTimeRecursive"],
  ["io_serviced_recursive", "total", "ioServicedRecursive"],
  ["io_time_recursive", "total", "ioTimeRecursive"],
  ["sectors_recursive", "total", "sectorsRecursive"],
];

/** Adds the families of a cgroup v1 Metrics message. */
export function addV1(set: FamilySet, id: string, namespace: string, m: V1Metrics): void {
  const l = { container_id: id, namespace };
  const usage = m.cpu?.usage;
  if (usage) {
    set.add("container_cpu_total_nanoseconds", "The total cpu time", l, usage.total);
    set.add("container_cpu_kernel_nanoseconds", "The total kernel cpu time", l, usage.kernel);
    set.add("container_cpu_user_nanoseconds", "The total user cpu time", l, usage.user);
    usage.perCpu.forEach((v, i) =>
      set.add("container_per_cpu_nanoseconds", "The total cpu time per cpu", {
        ...l,
        cpu: String(i),
      }, v)
    );
  }
  const thr = m.cpu?.throttling;
  if (thr) {
    set.add(
      "container_cpu_throttle_periods_total",
      "The total cpu throttle periods",
      l,
      thr.periods,
    );
    set.add(
      "container_cpu_throttled_periods_total",
      "The total cpu throttled periods",
      l,
      thr.throttledPeriods,
    );
    set.add(
      "container_cpu_throttled_time_nanoseconds",
      "The total cpu throttled time",
      l,
      thr.throttledTime,
    );
  }
  const mem = m.memory;
  if (mem) {
    for (const [name, field] of V1_MEMORY) {
      set.add(`container_memory_${name}_bytes`, `The ${name} amount`, l, mem[field] as bigint);
    }
    for (
      const [name, e] of [
        ["usage", mem.usage],
        ["swap", mem.swap],
        ["kernel", mem.kernel],
        ["kerneltcp", mem.kernelTcp],
      ] as const
    ) {
      if (!e) continue;
      set.add(`container_memory_${name}_failcnt_total`, `The ${name} failcnt`, l, e.failcnt);
      set.add(`container_memory_${name}_limit_bytes`, `The ${name} limit`, l, e.limit);
      set.add(`container_memory_${name}_max_bytes`, `The ${name} maximum usage`, l, e.max);
      set.add(`container_memory_${name}_usage_bytes`, `The ${name} usage`, l, e.usage);
    }
  }
  if (m.memoryOomControl) {
    set.add(
      "container_memory_oom_total",
      "The number of times a container has received an oom event",
      l,
      m.memoryOomControl.oomKill,
    );
  }
  if (m.pids) {
    set.add("container_pids_limit", "The limit to the number of pids allowed", l, m.pids.limit);
    set.add("container_pids_current", "The current number of pids", l, m.pids.current);
  }
  if (m.blkio) {
    for (const [name, unit, field] of V1_BLKIO) {
      for (const e of m.blkio[field] as BlkIOEntry[]) {
        set.add(`container_blkio_${name}_${unit}`, `The blkio ${name.replaceAll("_", " ")}`, {
          ...l,
          op: e.op,
          device: e.device,
          major: String(e.major),
          minor: String(e.minor),
        }, e.value);
      }
    }
  }
  for (const h of m.hugetlb) {
    const hl = { ...l, page: h.pagesize };
    set.add("container_hugetlb_usage_bytes", "The hugetlb usage", hl, h.usage);
    set.add("container_hugetlb_failcnt_total", "The hugetlb failcnt", hl, h.failcnt);
    set.add("container_hugetlb_max_bytes", "The hugetlb maximum usage", hl, h.max);
  }
}

const V2_MEMORY: [string, keyof NonNullable<V2Metrics["memory"]>][] = [
  ["usage", "usage"],
  ["usage_limit", "usageLimit"],
  ["swap_usage", "swapUsage"],
  ["swap_limit", "swapLimit"],
  ["file_mapped", "fileMapped"],
  ["file_dirty", "fileDirty"],
  ["file_writeback", "fileWriteback"],
  ["inactive_anon", "inactiveAnon"],
  ["active_anon", "activeAnon"],
  ["inactive_file", "inactiveFile"],
  ["active_file", "activeFile"],
  ["unevictable", "unevictable"],
  ["anon", "anon"],
  ["file", "file"],
  ["kernel_stack", "kernelStack"],
  ["slab", "slab"],
  ["sock", "sock"],
  ["shmem", "shmem"],
  ["anon_thp", "anonThp"],
  ["slab_reclaimable", "slabReclaimable"],
  ["slab_unreclaimable", "slabUnreclaimable"],
];

/** Adds the families of a cgroup v2 Metrics message. */
export function addV2(set: FamilySet, id: string, namespace: string, m: V2Metrics): void {
  const l = { container_id: id, namespace };
  if (m.cpu) {
    const us = "microseconds";
    set.add(`container_cpu_usage_usec_${us}`, "Total cpu usage (cgroup v2)", l, m.cpu.usageUsec);
    set.add(`container_cpu_user_usec_${us}`, "Current cpu usage in user space", l, m.cpu.userUsec);
    set.add(`container_cpu_system_usec_${us}`, "Current cpu usage in kernel", l, m.cpu.systemUsec);
    set.add("container_cpu_nr_periods_total", "Current cpu number of periods", l, m.cpu.nrPeriods);
    set.add(
      "container_cpu_nr_throttled_total",
      "Total number of throttled periods",
      l,
      m.cpu.nrThrottled,
    );
    set.add(
      `container_cpu_throttled_usec_${us}`,
      "Total cpu throttled time",
      l,
      m.cpu.throttledUsec,
    );
  }
  if (m.memory) {
    for (const [name, field] of V2_MEMORY) {
      set.add(`container_memory_${name}_bytes`, `The ${name} amount`, l, m.memory[field] as bigint);
    }
  }
  if (m.memoryEvents) {
    set.add(
      "container_memory_oom_total",
      "The number of times a container has received an oom event",
      l,
      m.memoryEvents.oom,
    );
  }
  if (m.pids) {
    set.add("container_pids_limit", "The limit to the number of pids allowed", l, m.pids.limit);
    set.add("container_pids_current", "The current number of pids", l, m.pids.current);
  }
  for (const e of m.io?.usage ?? []) {
    const il = { ...l, major: String(e.major), minor: String(e.minor) };
    set.add("container_io_rbytes_bytes", "IO bytes read", il, e.rbytes);
    set.add("container_io_wbytes_bytes", "IO bytes written", il, e.wbytes);
    set.add("container_io_rios_total", "Number of read IOs", il, e.rios);
    set.add("container_io_wios_total", "Number of write IOs", il, e.wios);
  }
}

/** Decodes a shim's Stats Any and adds its families; false for an unknown type. */
export function addStats(
  set: FamilySet,
  id: string,
  namespace: string,
  any: { typeUrl: string; value: Uint8Array },
): boolean {
  if (any.typeUrl.endsWith("io.containerd.cgroups.v1.Metrics")) {
    addV1(set, id, namespace, fromBinary(V1Schema, any.value));
    return true;
  }
  if (any.typeUrl.endsWith("io.containerd.cgroups.v2.Metrics")) {
    addV2(set, id, namespace, fromBinary(V2Schema, any.value));
    return true;
  }
  return false;
}
