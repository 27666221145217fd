/**
 * CRI container and pod statistics from the tasks' cgroup metrics (`Tasks.Metrics`, as the
 * shim reports them for cgroup v1 or v2) and the writable layer's usage, as containerd's
 * `container_stats_list.go` computes them.
 *
 * @module
 */

import { create, fromBinary } from "@bufbuild/protobuf";
import { MetricsSchema as V1Metrics } from "../../api/gen/io/containerd/cgroups/v1/metrics_pb.ts";
import { MetricsSchema as V2Metrics } from "../../api/gen/io/containerd/cgroups/v2/metrics_pb.ts";
import {
  type CpuUsage,
  CpuUsageSchema,
  type MemoryUsage,
  MemoryUsageSchema,
  UInt64ValueSchema,
} from "../../api/gen/runtime/v1/api_pb.ts";

/** CPU and memory usage of one cgroup. */
export interface CgroupUsage {
  cpu: CpuUsage;
  memory: MemoryUsage;
}

const u64 = (value: bigint) => ({ value });

/** Decodes a task metric (`io.containerd.cgroups.v1.Metrics` or v2) into CRI usage. */
export function usageFromMetric(
  typeUrl: string,
  value: Uint8Array,
  timestampNs: bigint,
): CgroupUsage | undefined {
  if (typeUrl.endsWith("io.containerd.cgroups.v1.Metrics")) {
    const m = fromBinary(V1Metrics, value);
    const mem = m.memory;
    const usage = mem?.usage?.usage ?? 0n;
    const inactive = mem?.totalInactiveFile ?? 0n;
    return {
      cpu: create(CpuUsageSchema, {
        timestamp: timestampNs,
        usageCoreNanoSeconds: u64(m.cpu?.usage?.total ?? 0n),
      }),
      memory: create(MemoryUsageSchema, {
        timestamp: timestampNs,
        workingSetBytes: u64(usage > inactive ? usage - inactive : 0n),
        usageBytes: u64(usage),
        rssBytes: u64(mem?.totalRss ?? 0n),
        pageFaults: u64(mem?.totalPgFault ?? 0n),
        majorPageFaults: u64(mem?.totalPgMajFault ?? 0n),
        ...availableBytes(mem?.usage?.limit ?? 0n, usage > inactive ? usage - inactive : 0n),
      }),
    };
  }
  if (typeUrl.endsWith("io.containerd.cgroups.v2.Metrics")) {
    const m = fromBinary(V2Metrics, value);
    const mem = m.memory;
    const usage = mem?.usage ?? 0n;
    const inactive = mem?.inactiveFile ?? 0n;
    const ws = usage > inactive ? usage - inactive : 0n;
    return {
      cpu: create(CpuUsageSchema, {
        timestamp: timestampNs,
        usageCoreNanoSeconds: u64((m.cpu?.usageUsec ?? 0n) * 1000n),
      }),
      memory: create(MemoryUsageSchema, {
        timestamp: timestampNs,
        workingSetBytes: u64(ws),
        usageBytes: u64(usage),
        rssBytes: u64(mem?.anon ?? 0n),
        pageFaults: u64(mem?.pgfault ?? 0n),
        majorPageFaults: u64(mem?.pgmajfault ?? 0n),
        ...availableBytes(mem?.usageLimit ?? 0n, ws),
      }),
    };
  }
  return undefined;
}

/** A limit of (nearly) 2^63 means none: no available_bytes then, as containerd. */
function availableBytes(limit: bigint, workingSet: bigint): { availableBytes?: { value: bigint } } {
  if (limit === 0n || limit >= 1n << 62n) return {};
  return { availableBytes: u64(limit > workingSet ? limit - workingSet : 0n) };
}

/**
 * Computes usage_nano_cores from two samples of usage_core_nano_seconds (containerd keeps
 * the previous sample per container).
 */
export class NanoCoresTracker {
  readonly #last = new Map<string, { ts: bigint; usage: bigint }>();

  /** Fills `cpu.usageNanoCores` from the previous sample of `id`. */
  update(id: string, cpu: CpuUsage): void {
    const usage = cpu.usageCoreNanoSeconds?.value ?? 0n;
    const prev = this.#last.get(id);
    if (prev && cpu.timestamp > prev.ts && usage >= prev.usage) {
      const nanoCores = (usage - prev.usage) * 1_000_000_000n / (cpu.timestamp - prev.ts);
      cpu.usageNanoCores = create(UInt64ValueSchema, { value: nanoCores });
    }
    this.#last.set(id, { ts: cpu.timestamp, usage });
  }

  /** Forgets an object. */
  forget(id: string): void {
    this.#last.delete(id);
  }
}
