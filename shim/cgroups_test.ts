import assert from "node:assert/strict";
import {
  cgroupFrom,
  cgroupFromSpec,
  cgroupMode,
  hugePageSize,
  keyed,
  parseBlkio,
  parseCpuacctStat,
  parseFlatKeyed,
  parseIoStat,
  parseMountinfo,
  parsePartitions,
  parsePerCpu,
  parseProcCgroup,
  parseRdma,
  parseSingle,
  parseUint,
  UINT64_MAX,
} from "./cgroups.ts";

const HYBRID_MOUNTINFO = `\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /nested /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw
`;

const UNIFIED_MOUNTINFO = `\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw
`;

Deno.test("parseMountinfo() reads roots, mount points, types and super options", () => {
  const mounts = parseMountinfo(HYBRID_MOUNTINFO);
  assert.equal(mounts.length, 8);
  assert.deepEqual(mounts[2], {
    root: "/",
    mountPoint: "/sys/fs/cgroup/cpu,cpuacct",
    fsType: "cgroup",
    superOptions: ["rw", "cpu", "cpuacct"],
  });
  assert.equal(mounts[3].root, "/nested");
  assert.equal(mounts[7].mountPoint, "/mnt/with space");
  assert.throws(() => parseMountinfo("1 2 3\n"), /Cannot parse the mountinfo line/);
});

Deno.test("cgroupMode() tells unified, hybrid, legacy and no cgroups apart", () => {
  assert.equal(cgroupMode(parseMountinfo(UNIFIED_MOUNTINFO)), "unified");
  assert.equal(cgroupMode(parseMountinfo(HYBRID_MOUNTINFO)), "hybrid");
  const legacy = HYBRID_MOUNTINFO.split("\n").filter((l) => !l.includes("cgroup2")).join("\n");
  assert.equal(cgroupMode(parseMountinfo(legacy)), "legacy");
  assert.equal(cgroupMode(parseMountinfo("22 1 254:0 / / rw - ext4 /dev/vda rw\n")), "unavailable");
});

Deno.test("parseProcCgroup() splits co-mounted controllers and finds the unified path", () => {
  const p = parseProcCgroup(
    "4:memory:/default/c1\n2:cpu,cpuacct:/default/c1\n" +
      "1:name=systemd:/user.slice\n0::/default/c1\n",
  );
  assert.deepEqual(Object.fromEntries(p.v1), {
    memory: "/default/c1",
    cpu: "/default/c1",
    cpuacct: "/default/c1",
    "name=systemd": "/user.slice",
  });
  assert.equal(p.unified, "/default/c1");
  assert.equal(parseProcCgroup("1:cpu:/a:b\n").v1.get("cpu"), "/a:b");
});

Deno.test("cgroupFrom() places each v1 subsystem under its mount, relative to the mount's root", () => {
  const cg = cgroupFrom(
    "9:name=systemd:/default/c1\n8:pids:/default/c1\n4:memory:/nested/default/c1\n" +
      "2:cpu,cpuacct:/default/c1\n0::/default/c1\n",
    parseMountinfo(HYBRID_MOUNTINFO),
  );
  assert.equal(cg.version, 1);
  assert.deepEqual(Object.fromEntries(cg.version === 1 ? cg.paths : []), {
    cpu: "/sys/fs/cgroup/cpu,cpuacct/default/c1",
    cpuacct: "/sys/fs/cgroup/cpu,cpuacct/default/c1",
    memory: "/sys/fs/cgroup/memory/default/c1",
    pids: "/sys/fs/cgroup/pids/default/c1",
    "name=systemd": "/sys/fs/cgroup/systemd/default/c1",
  });
  assert.deepEqual(cgroupFrom("0::/k8s/pod1/c1\n", parseMountinfo(UNIFIED_MOUNTINFO)), {
    version: 2,
    path: "/sys/fs/cgroup/k8s/pod1/c1",
  });
  assert.deepEqual(cgroupFrom("0::/\n", parseMountinfo(UNIFIED_MOUNTINFO)), {
    version: 2,
    path: "/sys/fs/cgroup",
  });
  assert.throws(
    () => cgroupFrom("1:cpu:/x\n", parseMountinfo(UNIFIED_MOUNTINFO)),
    /no cgroup v2 group/,
  );
});

Deno.test("cgroupFromSpec() resolves absolute and relative cgroupsPath as runc's cgroupfs", () => {
  const self = "8:pids:/shims\n4:memory:/nested/shims\n2:cpu,cpuacct:/shims\n0::/shims\n";
  const abs = cgroupFromSpec("/default/c1", parseMountinfo(HYBRID_MOUNTINFO), self);
  assert.equal(abs?.version, 1);
  if (abs?.version === 1) {
    assert.equal(abs.paths.get("memory"), "/sys/fs/cgroup/memory/default/c1");
    assert.equal(abs.paths.get("cpuacct"), "/sys/fs/cgroup/cpu,cpuacct/default/c1");
  }
  const rel = cgroupFromSpec("c1", parseMountinfo(HYBRID_MOUNTINFO), self);
  if (rel?.version === 1) {
    assert.equal(rel.paths.get("memory"), "/sys/fs/cgroup/memory/shims/c1");
    assert.equal(rel.paths.get("pids"), "/sys/fs/cgroup/pids/shims/c1");
  } else assert.fail("expected a v1 cgroup");
  assert.deepEqual(cgroupFromSpec("/default/c1", parseMountinfo(UNIFIED_MOUNTINFO), self), {
    version: 2,
    path: "/sys/fs/cgroup/default/c1",
  });
  assert.equal(
    cgroupFromSpec("system.slice:tainerd:c1", parseMountinfo(UNIFIED_MOUNTINFO), self),
    undefined,
  );
  assert.equal(cgroupFromSpec("", parseMountinfo(UNIFIED_MOUNTINFO), self), undefined);
});

Deno.test("parseUint() and parseSingle() read uint64, negatives as 0, max as told", () => {
  assert.equal(parseUint("9223372036854771712"), 9223372036854771712n);
  assert.equal(parseUint("18446744073709551615"), UINT64_MAX);
  assert.equal(parseUint("-1"), 0n);
  assert.throws(() => parseUint("18446744073709551616"), /Cannot parse/);
  assert.throws(() => parseUint("12k"), /Cannot parse/);
  assert.equal(parseSingle("max\n", 0n), 0n);
  assert.equal(parseSingle("max\n", UINT64_MAX), UINT64_MAX);
  assert.equal(parseSingle("42\n", 0n), 42n);
});

const MEMORY_STAT_V1 = `\
cache 1404928
rss 53248
rss_huge 0
shmem 0
mapped_file 4096
workingset_refault_file 782
pgpgin 46011
hierarchical_memory_limit 67108864
hierarchical_memsw_limit 9223372036854771712
total_cache 1404928
total_pgfault 74727
`;

Deno.test("parseFlatKeyed() reads memory.stat, cpu.stat and memory.oom_control", () => {
  const mem = parseFlatKeyed(MEMORY_STAT_V1);
  assert.equal(keyed(mem, "cache"), 1404928n);
  assert.equal(keyed(mem, "hierarchical_memsw_limit"), 9223372036854771712n);
  assert.equal(keyed(mem, "total_pgfault"), 74727n);
  assert.equal(keyed(mem, "absent"), 0n);

  const cpu = parseFlatKeyed(
    "nr_periods 12\nnr_throttled 3\nthrottled_time 4500000\nnr_bursts 0\nburst_time 0\n",
  );
  assert.deepEqual([keyed(cpu, "nr_periods"), keyed(cpu, "nr_throttled")], [12n, 3n]);
  assert.equal(keyed(cpu, "throttled_time"), 4500000n);

  const oom = parseFlatKeyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
  assert.equal(keyed(oom, "oom_kill"), 2n);

  // v2's files may hold words: kept as strings, read as 0 by keyed()
  const v2 = parseFlatKeyed("usage_usec 100\nweird max\n");
  assert.equal(v2.get("weird"), "max");
  assert.equal(keyed(v2, "weird"), 0n);
  assert.throws(() => parseFlatKeyed("cache 1 2\n"), /not "key value"/);
});

Deno.test("parseCpuacctStat() converts clock ticks to nanoseconds; parsePerCpu() splits", () => {
  assert.deepEqual(parseCpuacctStat("user 109330\nsystem 56827\n"), {
    user: 1093300000000n,
    kernel: 568270000000n,
  });
  assert.throws(() => parseCpuacctStat("system 1\nuser 2\n"), /expected "user N system N"/);
  assert.deepEqual(parsePerCpu("41545180 13191771 \n"), [41545180n, 13191771n]);
  assert.deepEqual(parsePerCpu("\n"), []);
});

const PARTITIONS = `\
major minor  #blocks  name

 254        0  268435456 vda
 254        1  268434432 vda1
   8        0   10485760 sda
`;

Deno.test("parseBlkio() reads per-device, per-op lines and names devices", () => {
  const devices = parsePartitions(PARTITIONS);
  assert.deepEqual(Object.fromEntries(devices), {
    "254:0": "/dev/vda",
    "254:1": "/dev/vda1",
    "8:0": "/dev/sda",
  });
  const bytes = parseBlkio(
    "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 12288\n254:0 Async 0\n" +
      "254:0 Discard 0\n254:0 Total 12288\n7:3 Read 1\nTotal 12289\n",
    devices,
  );
  assert.equal(bytes.length, 7);
  assert.deepEqual(bytes[1], {
    op: "Write",
    device: "/dev/vda",
    major: 254n,
    minor: 0n,
    value: 8192n,
  });
  assert.deepEqual(bytes[6], { op: "Read", device: "", major: 7n, minor: 3n, value: 1n });
  // sectors_recursive and time_recursive have no op
  assert.deepEqual(parseBlkio("8:0 2048\n", devices), [
    { op: "", device: "/dev/sda", major: 8n, minor: 0n, value: 2048n },
  ]);
  assert.deepEqual(parseBlkio("Total 0\n", devices), []);
  assert.throws(() => parseBlkio("8:0\n", devices), /Cannot parse the blkio line/);
});

Deno.test("parseIoStat() reads cgroup v2 io.stat", () => {
  assert.deepEqual(
    parseIoStat(
      "254:0 rbytes=1048576 wbytes=4096 rios=12 wios=1 dbytes=0 dios=0\n" +
        "8:16 rbytes=0 wbytes=0 rios=0 wios=0 dbytes=0 dios=0\nbogus\n",
    ),
    [
      { major: 254n, minor: 0n, rbytes: 1048576n, wbytes: 4096n, rios: 12n, wios: 1n },
      { major: 8n, minor: 16n, rbytes: 0n, wbytes: 0n, rios: 0n, wios: 0n },
    ],
  );
});

Deno.test("parseRdma() and hugePageSize() read as containerd/cgroups does", () => {
  assert.deepEqual(
    parseRdma("mlx4_0 hca_handle=2 hca_object=2000\nmlx4_1 hca_handle=max hca_object=max\n"),
    [
      { device: "mlx4_0", hcaHandles: 2, hcaObjects: 2000 },
      { device: "mlx4_1", hcaHandles: 0xffffffff, hcaObjects: 0xffffffff },
    ],
  );
  assert.equal(hugePageSize("hugepages-2048kB"), "2MB");
  assert.equal(hugePageSize("hugepages-1048576kB"), "1GB");
  assert.equal(hugePageSize("hugepages-64kB"), "64KB");
  assert.equal(hugePageSize("hugepages-32768kB"), "32MB");
});
