import assert from "node:assert/strict";
import { fromBinary } from "@bufbuild/protobuf";
import * as v1 from "../api/gen/io/containerd/cgroups/v1/metrics_pb.ts";
import * as v2 from "../api/gen/io/containerd/cgroups/v2/metrics_pb.ts";
import { loadCgroup, UINT64_MAX } from "./cgroups.ts";
import { cgroupStats, memoryStatV1, statsV1, statsV2, throttleV1 } from "./stats.ts";

/** Writes `files` (relative path → content) under a new temp dir; returns the dir. */
async function tree(files: Record<string, string>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-cgroup-" });
  for (const [path, content] of Object.entries(files)) {
    await Deno.mkdir(`${dir}/${path}`.replace(/\/[^/]*$/, ""), { recursive: true });
    await Deno.writeTextFile(`${dir}/${path}`, content);
  }
  return dir;
}

const V1_FILES: Record<string, string> = {
  "proc/partitions": "major minor  #blocks  name\n\n 254        0  268435456 vda\n",
  "hugepages/hugepages-2048kB/nr_hugepages": "0\n",
  "hugepages/hugepages-1048576kB/nr_hugepages": "0\n",
  "pids/c1/pids.current": "3\n",
  "pids/c1/pids.max": "max\n",
  "cpu/c1/cpu.stat": "nr_periods 10\nnr_throttled 2\nthrottled_time 300\nnr_bursts 0\n",
  "cpuacct/c1/cpuacct.stat": "user 5\nsystem 2\n",
  "cpuacct/c1/cpuacct.usage": "71000000\n",
  "cpuacct/c1/cpuacct.usage_percpu": "41000000 30000000 \n",
  "memory/c1/memory.stat": "cache 4096\nrss 8192\nrss_huge 0\npgpgin 7\npgmajfault 1\n" +
    "hierarchical_memory_limit 67108864\nhierarchical_memsw_limit 134217728\n" +
    "total_cache 4096\ntotal_rss 8192\ntotal_unevictable 5\n",
  "memory/c1/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
  "memory/c1/memory.usage_in_bytes": "12288\n",
  "memory/c1/memory.max_usage_in_bytes": "20480\n",
  "memory/c1/memory.failcnt": "4\n",
  "memory/c1/memory.limit_in_bytes": "67108864\n",
  // no memory.memsw.* (swap accounting off): the swap entry stays zero
  "memory/c1/memory.kmem.usage_in_bytes": "1024\n",
  "memory/c1/memory.kmem.max_usage_in_bytes": "2048\n",
  "memory/c1/memory.kmem.failcnt": "0\n",
  "memory/c1/memory.kmem.limit_in_bytes": "9223372036854771712\n",
  "blkio/c1/blkio.throttle.io_serviced": "254:0 Read 3\n254:0 Write 1\nTotal 4\n",
  "blkio/c1/blkio.throttle.io_service_bytes": "254:0 Read 12288\n254:0 Write 4096\nTotal 16384\n",
  "hugetlb/c1/hugetlb.2MB.usage_in_bytes": "2097152\n",
  "hugetlb/c1/hugetlb.2MB.max_usage_in_bytes": "4194304\n",
  "hugetlb/c1/hugetlb.2MB.failcnt": "1\n",
  "hugetlb/c1/hugetlb.1GB.usage_in_bytes": "0\n",
  "hugetlb/c1/hugetlb.1GB.max_usage_in_bytes": "0\n",
  "hugetlb/c1/hugetlb.1GB.failcnt": "0\n",
};

function v1Paths(dir: string, subsystems: string[]): Map<string, string> {
  return new Map(subsystems.map((s) => [s, `${dir}/${s}/c1`]));
}

Deno.test("memoryStatV1() and throttleV1() map the v1 files to containerd's fields", () => {
  const m = memoryStatV1(V1_FILES["memory/c1/memory.stat"]);
  assert.equal(m.cache, 4096n);
  assert.equal(m.rss, 8192n);
  assert.equal(m.pgPgIn, 7n);
  assert.equal(m.pgMajFault, 1n);
  assert.equal(m.hierarchicalSwapLimit, 134217728n);
  assert.equal(m.totalUnevictable, 5n);
  assert.equal(m.dirty, 0n);
  assert.deepEqual(throttleV1(V1_FILES["cpu/c1/cpu.stat"]), {
    periods: 10n,
    throttledPeriods: 2n,
    throttledTime: 300n,
  });
});

Deno.test("statsV1() reads every v1 subsystem as containerd/cgroups does", async () => {
  const dir = await tree(V1_FILES);
  try {
    const m = await statsV1(
      v1Paths(dir, ["pids", "cpu", "cpuacct", "memory", "blkio", "hugetlb", "freezer"]),
      { proc: `${dir}/proc`, hugepages: `${dir}/hugepages` },
    );
    assert.equal(m.pids?.current, 3n);
    assert.equal(m.pids?.limit, 0n, "v1 reports an unlimited pids.max as 0");
    assert.deepEqual(
      [m.cpu?.usage?.total, m.cpu?.usage?.user, m.cpu?.usage?.kernel],
      [71000000n, 50000000n, 20000000n],
    );
    assert.deepEqual(m.cpu?.usage?.perCpu, [41000000n, 30000000n]);
    assert.equal(m.cpu?.throttling?.throttledPeriods, 2n);
    assert.equal(m.memory?.cache, 4096n);
    assert.equal(m.memory?.hierarchicalMemoryLimit, 67108864n);
    assert.deepEqual(
      [m.memory?.usage?.usage, m.memory?.usage?.max, m.memory?.usage?.failcnt],
      [12288n, 20480n, 4n],
    );
    assert.equal(m.memory?.usage?.limit, 67108864n);
    assert.equal(m.memory?.swap?.usage, 0n);
    assert.equal(m.memory?.kernel?.usage, 1024n);
    assert.equal(m.memory?.kernel?.limit, 9223372036854771712n);
    assert.ok(m.memory?.kernelTcp, "an entry for every module, as containerd");
    assert.equal(m.memoryOomControl?.oomKill, 1n);
    // no *_recursive statistics: the throttling layer's
    assert.deepEqual(
      m.blkio?.ioServicedRecursive.map((e) => [e.device, e.major, e.minor, e.op, e.value]),
      [["/dev/vda", 254n, 0n, "Read", 3n], ["/dev/vda", 254n, 0n, "Write", 1n]],
    );
    assert.equal(m.blkio?.ioServiceBytesRecursive[0].value, 12288n);
    assert.deepEqual(m.blkio?.sectorsRecursive, []);
    assert.deepEqual(
      m.hugetlb.map((h) => [h.pagesize, h.usage, h.max, h.failcnt]),
      [["1GB", 0n, 0n, 0n], ["2MB", 2097152n, 4194304n, 1n]],
    );
    assert.equal(m.rdma, undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("statsV1() prefers the *_recursive blkio files and skips missing subsystems", async () => {
  const dir = await tree({
    "proc/partitions": V1_FILES["proc/partitions"],
    "blkio/c1/blkio.io_serviced_recursive": "254:0 Read 5\n254:0 Write 6\nTotal 11\n",
    "blkio/c1/blkio.io_service_bytes_recursive": "254:0 Read 20480\nTotal 20480\n",
    "blkio/c1/blkio.sectors_recursive": "254:0 40\n",
    "blkio/c1/blkio.time_recursive": "254:0 1234\n",
    "blkio/c1/blkio.throttle.io_serviced": "254:0 Read 99\n",
  });
  try {
    const m = await statsV1(v1Paths(dir, ["blkio", "memory", "pids"]), {
      proc: `${dir}/proc`,
      hugepages: `${dir}/none`,
    });
    assert.deepEqual(m.blkio?.ioServicedRecursive.map((e) => e.value), [5n, 6n]);
    assert.deepEqual(m.blkio?.sectorsRecursive.map((e) => [e.op, e.value]), [["", 40n]]);
    assert.deepEqual(m.blkio?.ioTimeRecursive.map((e) => e.value), [1234n]);
    assert.deepEqual(m.blkio?.ioQueuedRecursive, []);
    assert.equal(m.memory, undefined, "no memory.stat: no memory statistics");
    assert.equal(m.pids, undefined);
    assert.ok(m.cpu?.usage && m.cpu.throttling, "cpu is always there, as containerd's");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("statsV2() reads the unified files as containerd/cgroups' Manager.Stat", async () => {
  const dir = await tree({
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids\n",
    "cpu.stat": "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 4\n" +
      "nr_throttled 1\nthrottled_usec 700\n",
    "memory.stat": "anon 1048576\nfile 4096\nkernel_stack 16384\nslab 2048\nsock 0\n" +
      "shmem 0\nfile_mapped 4096\npgfault 300\npgmajfault 2\nworkingset_refault_anon 0\n" +
      "thp_collapse_alloc 1\n",
    "memory.current": "1200000\n",
    "memory.max": "67108864\n",
    "memory.swap.current": "0\n",
    "memory.swap.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
    "pids.current": "2\n",
    "pids.max": "max\n",
    "io.stat": "254:0 rbytes=8192 wbytes=4096 rios=2 wios=1 dbytes=0 dios=0\n",
    "hugetlb.2MB.current": "0\n",
    "hugetlb.2MB.max": "max\n",
    "hugetlb.2MB.rsvd.current": "0\n",
    "hugetlb.2MB.events": "max 0\n",
  });
  try {
    const m = await statsV2(dir);
    assert.deepEqual([m.pids?.current, m.pids?.limit], [2n, UINT64_MAX]);
    assert.deepEqual(
      [m.cpu?.usageUsec, m.cpu?.userUsec, m.cpu?.systemUsec, m.cpu?.throttledUsec],
      [5000n, 3000n, 2000n, 700n],
    );
    assert.equal(m.memory?.anon, 1048576n);
    assert.equal(m.memory?.fileMapped, 4096n);
    assert.equal(m.memory?.pgmajfault, 2n);
    assert.equal(m.memory?.thpCollapseAlloc, 1n);
    assert.deepEqual(
      [m.memory?.usage, m.memory?.usageLimit, m.memory?.swapUsage, m.memory?.swapLimit],
      [1200000n, 67108864n, 0n, UINT64_MAX],
    );
    assert.deepEqual([m.memoryEvents?.max, m.memoryEvents?.oom, m.memoryEvents?.oomKill], [
      3n,
      1n,
      1n,
    ]);
    assert.deepEqual(m.io?.usage.map((e) => [e.major, e.minor, e.rbytes, e.wios]), [
      [254n, 0n, 8192n, 1n],
    ]);
    assert.deepEqual(m.hugetlb.map((h) => [h.pagesize, h.current, h.max]), [
      ["2MB", 0n, UINT64_MAX],
    ]);
    assert.deepEqual([m.rdma?.current, m.rdma?.limit], [[], []]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("statsV2() reads cpu.stat and memory.stat only for enabled controllers", async () => {
  const dir = await tree({
    "cgroup.controllers": "pids\n",
    "cpu.stat": "usage_usec 5000\n",
    "memory.stat": "anon 1\n",
  });
  try {
    const m = await statsV2(dir);
    assert.equal(m.cpu?.usageUsec, 0n);
    assert.equal(m.memory?.anon, 0n);
    assert.equal(m.memoryEvents, undefined);
    assert.deepEqual([m.pids?.current, m.pids?.limit], [0n, 0n]);
    await assert.rejects(statsV2(`${dir}/gone`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cgroupStats() packs the metrics under the bare type name typeurl uses", async () => {
  const dir = await tree({
    ...V1_FILES,
    "unified/c1/cgroup.controllers": "pids\n",
    "unified/c1/pids.current": "1\n",
  });
  try {
    const any1 = await cgroupStats({ version: 1, paths: v1Paths(dir, ["pids", "memory"]) }, {
      proc: `${dir}/proc`,
      hugepages: `${dir}/hugepages`,
    });
    assert.equal(any1.typeUrl, "io.containerd.cgroups.v1.Metrics");
    const m1 = fromBinary(v1.MetricsSchema, any1.value);
    assert.equal(m1.pids?.current, 3n);
    assert.equal(m1.memory?.usage?.limit, 67108864n);

    const any2 = await cgroupStats({ version: 2, path: `${dir}/unified/c1` });
    assert.equal(any2.typeUrl, "io.containerd.cgroups.v2.Metrics");
    assert.equal(fromBinary(v2.MetricsSchema, any2.value).pids?.current, 1n);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cgroupStats() reads this process's own cgroup on the host", async () => {
  const cg = await loadCgroup(Deno.pid);
  const any = await cgroupStats(cg);
  if (cg.version === 1) {
    const m = fromBinary(v1.MetricsSchema, any.value);
    assert.equal(any.typeUrl, "io.containerd.cgroups.v1.Metrics");
    if (cg.paths.has("memory")) assert.ok((m.memory?.usage?.usage ?? 0n) > 0n);
    if (cg.paths.has("cpuacct")) assert.ok((m.cpu?.usage?.total ?? 0n) > 0n);
  } else {
    const m = fromBinary(v2.MetricsSchema, any.value);
    assert.equal(any.typeUrl, "io.containerd.cgroups.v2.Metrics");
    assert.ok(m.cpu);
  }
});
