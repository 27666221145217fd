/**
 * The six figures of the side-by-side benchmark. Each measures both daemons with the same
 * real `ctr` commands (or the same client), interleaved, and appends rows to the session; a
 * prerequisite tainerd lacks yields "n/a (reason)" for its cells instead of failing the run.
 *
 * @module
 */

import * as net from "node:net";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { NAMESPACE_HEADER } from "../../mod.ts";
import { Version } from "../../api/gen/containerd/services/version/v1/version_pb.ts";
import { Containers } from "../../api/gen/containerd/services/containers/v1/containers_pb.ts";
import { type BenchDaemon, type Kind, NAMESPACE } from "./daemons.ts";
import { buildPullImage, type LayoutImage, pushLayout } from "./images.ts";
import { type Exec, exec, memoryOf, mustExec, reasonOf, shimsOf, waitFor } from "./proc.ts";
import {
  type Availability,
  PULL_NAMESPACE,
  removeAllContainers,
  RUN_IMAGE,
  type Session,
  waitNoShims,
} from "./session.ts";
import { row } from "./stats.ts";

/** Samples per daemon: `t` for tainerd, `c` for containerd. */
type Samples = Record<Kind, number[]>;
const samples = (): Samples => ({ containerd: [], tainerd: [] });

/** The cell for one daemon: its samples, or why it has none. */
function cellOf(s: Samples, kind: Kind, na: Partial<Record<Kind, string>>): number[] | string {
  return na[kind] ?? s[kind];
}

function check(r: Exec, what: string): Exec {
  if (r.code !== 0) throw new Error(`${what}: ${reasonOf(r)}`);
  return r;
}

/** How containers of figures 2, 4 and 5 are run: from the image when both can, else --rootfs. */
async function fleetVariant(s: Session): Promise<{ args: string[]; label: string }> {
  const img = await s.runImage();
  if (img.containerd === true && img.tainerd === true) return { args: [RUN_IMAGE], label: "IMG" };
  return { args: ["--rootfs", s.rootfs], label: "--rootfs" };
}

/** Starts `ids` concurrently with `ctr run -d … sleep 1000`; ms until all are RUNNING. */
async function fleetUp(d: BenchDaemon, ids: string[], variant: string[]): Promise<number> {
  const t0 = performance.now();
  const runs = await Promise.all(
    ids.map((id) => d.ctr(["run", "-d", ...d.runFlags(), ...variant, id, "/bin/sleep", "1000"])),
  );
  const failed = runs.find((r) => r.code !== 0);
  if (failed) throw new Error(`ctr run -d (${d.kind}): ${reasonOf(failed)}`);
  await waitFor(
    async () => {
      const tasks = await d.tasks();
      return ids.every((id) => tasks.get(id) === "RUNNING");
    },
    `${ids.length} RUNNING tasks on ${d.kind}`,
    120_000,
    10,
  );
  return performance.now() - t0;
}

/** Removes `ids` concurrently (`ctr tasks rm -f`, `ctr containers rm`); ms until done. */
async function fleetDown(d: BenchDaemon, ids: string[]): Promise<number> {
  const t0 = performance.now();
  await Promise.all(ids.map(async (id) => {
    check(await d.ctr(["tasks", "rm", "-f", id]), `ctr tasks rm -f (${d.kind})`);
    check(await d.ctr(["containers", "rm", id]), `ctr containers rm (${d.kind})`);
  }));
  const ms = performance.now() - t0;
  const left = (await d.ctr(["containers", "ls", "-q"])).stdout.trim();
  if (left) throw new Error(`${d.kind} still has containers: ${left.split("\n").join(" ")}`);
  await waitNoShims(d);
  return ms;
}

const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

/** 1. `ctr run --rm … true` latency (image and --rootfs), with `runc run` as the floor. */
export async function runLatency(s: Session): Promise<void> {
  const n = s.opts.smoke ? 2 : s.opts.quick ? 6 : 30;
  const warm = s.opts.quick ? 1 : 2;
  const img = await s.runImage();
  const na: Partial<Record<Kind, string>> = {};
  for (const k of ["containerd", "tainerd"] as Kind[]) {
    if (img[k] !== true) na[k] = img[k] as string;
  }

  // The floor: the same rootfs as a runc bundle, `runc run` in the foreground.
  const bundle = `${s.dir}/floor`;
  await Deno.mkdir(bundle, { recursive: true });
  await mustExec("runc", ["spec", "--bundle", bundle]);
  const spec = JSON.parse(await Deno.readTextFile(`${bundle}/config.json`));
  spec.process.terminal = false;
  spec.process.args = ["/bin/true"];
  spec.root = { path: s.rootfs, readonly: true };
  await Deno.writeTextFile(`${bundle}/config.json`, JSON.stringify(spec));
  const runcRoot = `${s.dir}/floor-runc`;

  const image = samples();
  const rootfs = samples();
  const floor: number[] = [];
  const shimExec = samples();
  const naRootfs: Partial<Record<Kind, string>> = {};
  // The shims' own version flag: process start, module loading, exit.
  const shimV = ["shim", "-namespace", NAMESPACE, "-id", "v", "-address", "/nonexistent", "-v"];
  const [tainerdCmd, ...tainerdExe] = [...s.tainerd.entry, ...shimV];
  /** Runs one timed command; a failure marks the daemon n/a for that variant. */
  const timed = async (
    into: number[],
    keep: boolean,
    na: Partial<Record<Kind, string>>,
    kind: Kind,
    what: string,
    run: () => Promise<Exec>,
  ) => {
    if (na[kind]) return;
    const r = await run();
    if (r.code !== 0) na[kind] = `${what}: ${reasonOf(r)}`;
    else if (keep) into.push(r.ms);
  };
  for (let i = 0; i < warm + n; i++) {
    const keep = i >= warm;
    for (const d of s.order(i)) {
      await timed(
        image[d.kind],
        keep,
        na,
        d.kind,
        "ctr run --rm IMG",
        () => d.ctr(["run", "--rm", ...d.runFlags(), RUN_IMAGE, `img${i}`, "/bin/true"]),
      );
      await timed(
        rootfs[d.kind],
        keep,
        naRootfs,
        d.kind,
        "ctr run --rm --rootfs",
        () => d.ctr(["run", "--rm", ...d.runFlags(), "--rootfs", s.rootfs, `rfs${i}`, "/bin/true"]),
      );
    }
    const f = check(
      await exec("runc", ["--root", runcRoot, "run", "--bundle", bundle, `floor${i}`]),
      "runc run",
    );
    if (keep) floor.push(f.ms);
    for (const d of s.order(i)) {
      const r = d.kind === "containerd"
        ? await exec("containerd-shim-runc-v2", shimV.slice(1))
        : await exec(tainerdCmd, tainerdExe);
      check(r, `${d.kind} shim executable -v`);
      if (keep) shimExec[d.kind].push(r.ms);
    }
  }
  s.rows.push(
    row({
      figure: 1,
      metric: "`ctr run --rm IMG id true`",
      unit: "ms",
      better: "lower",
      containerd: cellOf(image, "containerd", na),
      tainerd: cellOf(image, "tainerd", na),
    }),
    row({
      figure: 1,
      metric: "`ctr run --rm --rootfs DIR id true`",
      unit: "ms",
      better: "lower",
      containerd: cellOf(rootfs, "containerd", naRootfs),
      tainerd: cellOf(rootfs, "tainerd", naRootfs),
    }),
    row({
      figure: 1,
      metric: "`runc run` of the same rootfs (floor)",
      unit: "ms",
      better: "lower",
      single: floor,
      note: "no daemon, no shim",
    }),
    row({
      figure: 1,
      metric: "shim executable start+exit (`-v`)",
      unit: "ms",
      better: "lower",
      containerd: shimExec.containerd,
      tainerd: shimExec.tainerd,
      note: "`containerd-shim-runc-v2 -v` vs tainerd's `shim -v` (as the daemon runs it); " +
        "containerd execs its shim twice per container (start, then the long-lived " +
        "shim); tainerd's daemon starts its own shim once",
    }),
  );
}

/** 2. 20 concurrent `ctr run -d … sleep 1000` until all RUNNING, and their teardown. */
export async function concurrentStart(s: Session): Promise<void> {
  const count = 20;
  const reps = s.opts.quick ? 1 : 3;
  const variant = await fleetVariant(s);
  const rate = samples();
  const down = samples();
  const na: Partial<Record<Kind, string>> = {};
  for (let rep = 0; rep < reps; rep++) {
    for (const d of s.order(rep)) {
      if (na[d.kind]) continue;
      const fleet = ids(`f${rep}-`, count);
      try {
        const up = await fleetUp(d, fleet, variant.args);
        rate[d.kind].push(count / (up / 1000));
        down[d.kind].push((await fleetDown(d, fleet)) / 1000);
      } catch (err) {
        na[d.kind] = (err as Error).message;
        await removeAllContainers(d).catch(() => {});
      }
    }
  }
  s.rows.push(
    row({
      figure: 2,
      metric: `${count} concurrent \`ctr run -d ${variant.label} … sleep 1000\` → all RUNNING`,
      unit: "containers/s",
      better: "higher",
      containerd: cellOf(rate, "containerd", na),
      tainerd: cellOf(rate, "tainerd", na),
    }),
    row({
      figure: 2,
      metric: `teardown of ${count}: concurrent \`ctr tasks rm -f\` + \`ctr containers rm\``,
      unit: "s",
      better: "lower",
      containerd: cellOf(down, "containerd", na),
      tainerd: cellOf(down, "tainerd", na),
    }),
  );
}

/** Parses a Go duration (`1.5s`, `850.2ms`, `1m2.5s`) into milliseconds. */
export function parseGoDuration(text: string): number {
  const units: Record<string, number> = {
    h: 3600e3,
    m: 60e3,
    s: 1e3,
    ms: 1,
    "µs": 1e-3,
    us: 1e-3,
    ns: 1e-6,
  };
  let ms = 0;
  for (const m of text.matchAll(/([\d.]+)(h|ms|m|s|µs|us|ns)/g)) ms += Number(m[1]) * units[m[2]];
  return ms;
}

/** Removes every image, content blob and snapshot of the pull namespace, and waits for the GC. */
async function wipePulls(d: BenchDaemon, image: LayoutImage): Promise<void> {
  const namespace = PULL_NAMESPACE;
  const imgs = (await d.ctr(["images", "ls", "-q"], { namespace })).stdout.trim().split("\n")
    .filter((x) => x);
  const blobs = (await d.ctr(["content", "ls", "-q"], { namespace })).stdout.trim().split("\n")
    .filter((x) => x);
  if (blobs.length) await d.ctr(["content", "rm", ...blobs], { namespace });
  if (imgs.length) {
    check(await d.ctr(["images", "rm", "--sync", ...imgs], { namespace }), "ctr images rm");
  }
  // Snapshots the GC left: remove leaves first.
  for (let pass = 0; pass < 10; pass++) {
    const ls = (await d.ctr(["snapshots", "ls"], { namespace })).stdout.trim().split("\n").slice(1)
      .map((l) => l.trim().split(/\s+/)).filter((f) => f[0]);
    if (!ls.length) break;
    const parents = new Set(ls.map((f) => f[1]));
    for (const [key] of ls.filter((f) => !parents.has(f[0]))) {
      await d.ctr(["snapshots", "rm", key], { namespace });
    }
  }
  const left = (await d.ctr(["snapshots", "ls"], { namespace })).stdout.trim().split("\n").slice(1)
    .filter((l) => l.trim());
  if (left.length) throw new Error(`${d.kind} keeps ${left.length} snapshots after the wipe`);
  // A blob left on disk would let the next fetch skip its download.
  const dir = `${d.root}/io.containerd.content.v1.content/blobs/sha256`;
  await waitFor(
    () => image.layers.every((l) => !exists(`${dir}/${l.slice(7)}`)),
    `${d.kind}'s GC of the pulled blobs`,
    60_000,
    50,
  );
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** 3. Pull of a large image from the loopback registry: download, unpack, total. */
export async function pull(s: Session): Promise<void> {
  const reps = s.opts.quick ? 1 : 3;
  const size = s.opts.smoke
    ? { randomMiB: 4, smallFiles: 200 }
    : s.opts.quick
    ? { randomMiB: 48, smallFiles: 2_000 }
    : { randomMiB: 200, smallFiles: 20_000 };
  const registry = await s.registry();
  const image = await buildPullImage(`${s.dir}/images/pull`, size);
  const ref = `${registry.host}/bench/pull:latest`;
  await pushLayout(image, ref);
  const mb = (image.bytes / 1e6).toFixed(0);
  const download = samples();
  const unpack = samples();
  const total = samples();
  const na: Partial<Record<Kind, string>> = {};
  for (let rep = 0; rep < reps; rep++) {
    for (const d of s.order(rep)) {
      if (na[d.kind]) continue;
      try {
        await wipePulls(d, image);
        const f = await d.ctr(["content", "fetch", "--plain-http", ref], {
          namespace: PULL_NAMESPACE,
        });
        check(f, `ctr content fetch (${d.kind})`);
        await wipePulls(d, image);
        const p = await d.ctr(["images", "pull", "--plain-http", ref], {
          namespace: PULL_NAMESPACE,
        });
        check(p, `ctr images pull (${d.kind})`);
        const done = p.stdout.match(/^done: (\S+)/m)?.[1];
        if (!done) throw new Error(`ctr images pull (${d.kind}) printed no "done:" line`);
        download[d.kind].push(f.ms / 1000);
        total[d.kind].push(p.ms / 1000);
        unpack[d.kind].push(parseGoDuration(done) / 1000);
        await wipePulls(d, image);
      } catch (err) {
        na[d.kind] = (err as Error).message;
      }
    }
  }
  if (!na.tainerd) s.availability["pull"] = "ok";
  else s.availability["pull"] = na.tainerd;

  // Per layer: each layer alone as an image, unpacked by each daemon (the `done:` time of
  // `ctr images pull`), with GNU tar extracting the same gzip blob as the floor.
  const layerRows = [];
  for (const [name, single] of Object.entries(image.single ?? {})) {
    const sref = `${registry.host}/bench/pull-${name}:latest`;
    await pushLayout(single, sref);
    const un = samples();
    const floor: number[] = [];
    const sna: Partial<Record<Kind, string>> = { ...na };
    const blob = `${single.dir}/blobs/sha256/${single.layers[0].slice(7)}`;
    for (let rep = 0; rep < reps; rep++) {
      for (const d of s.order(rep)) {
        if (sna[d.kind]) continue;
        try {
          await wipePulls(d, single);
          await d.ctr(["content", "fetch", "--plain-http", sref], { namespace: PULL_NAMESPACE });
          const p = await d.ctr(["images", "pull", "--plain-http", sref], {
            namespace: PULL_NAMESPACE,
          });
          check(p, `ctr images pull ${name} (${d.kind})`);
          const done = p.stdout.match(/^done: (\S+)/m)?.[1];
          if (!done) throw new Error(`ctr images pull (${d.kind}) printed no "done:" line`);
          un[d.kind].push(parseGoDuration(done) / 1000);
          await wipePulls(d, single);
        } catch (err) {
          sna[d.kind] = (err as Error).message;
        }
      }
      const out = await Deno.makeTempDir({ dir: s.dir, prefix: "tar-floor-" });
      const t = await exec("tar", ["-xzf", blob, "-C", out]);
      check(t, "tar -xzf (floor)");
      floor.push(t.ms / 1000);
      await Deno.remove(out, { recursive: true });
    }
    const what = name === "large"
      ? `the layer of one ${size.randomMiB} MiB file`
      : `the layer of ${size.smallFiles} small files`;
    layerRows.push(
      row({
        figure: 3,
        metric: `unpack ${what} (\`done:\` of \`ctr images pull\`)`,
        unit: "s",
        better: "lower",
        containerd: cellOf(un, "containerd", sna),
        tainerd: cellOf(un, "tainerd", sna),
      }),
      row({
        figure: 3,
        metric: `\`tar -xzf\` of the same blob (floor)`,
        unit: "s",
        better: "lower",
        single: floor,
        note: "GNU tar into an empty dir, no daemon",
      }),
    );
  }
  const what =
    `${mb} MB image (${size.randomMiB} MiB random file + ${size.smallFiles} small files)`;
  s.rows.push(
    row({
      figure: 3,
      metric: `download: \`ctr content fetch --plain-http\`, ${what}`,
      unit: "s",
      better: "lower",
      containerd: cellOf(download, "containerd", na),
      tainerd: cellOf(download, "tainerd", na),
    }),
    row({
      figure: 3,
      metric: "unpack: the `done:` time `ctr images pull` prints",
      unit: "s",
      better: "lower",
      containerd: cellOf(unpack, "containerd", na),
      tainerd: cellOf(unpack, "tainerd", na),
    }),
    row({
      figure: 3,
      metric: "total: `ctr images pull --plain-http` (fetch + unpack)",
      unit: "s",
      better: "lower",
      containerd: cellOf(total, "containerd", na),
      tainerd: cellOf(total, "tainerd", na),
    }),
    ...layerRows,
  );
}

/** Memory of a daemon and its shims, MiB. */
interface MemorySample {
  rss: number;
  pss: number;
  shims: number;
  shimPss: number;
  shimRss: number;
}

function sampleMemory(d: BenchDaemon): MemorySample {
  const m = memoryOf(d.pid!);
  if (!m) throw new Error(`${d.kind} is not running`);
  const shims = shimsOf(d.address).map((p) => memoryOf(p)).filter((x) => x !== undefined);
  return {
    rss: m.rssKiB / 1024,
    pss: m.pssKiB / 1024,
    shims: shims.length,
    shimPss: shims.reduce((n, x) => n + x.pssKiB, 0) / 1024,
    shimRss: shims.reduce((n, x) => n + x.rssKiB, 0) / 1024,
  };
}

/** 4. Daemon RSS/PSS idle and with 20 containers; shim PSS per container at 1 and 20. */
export async function memory(s: Session): Promise<void> {
  const reps = s.opts.quick ? 1 : 2;
  const settleMs = 2000;
  const variant = await fleetVariant(s);
  const m = {
    idleRss: samples(),
    idlePss: samples(),
    rss20: samples(),
    pss20: samples(),
    shim1: samples(),
    shim20: samples(),
    shimRss1: samples(),
  };
  const na: Partial<Record<Kind, string>> = {};
  for (let rep = 0; rep < reps; rep++) {
    for (const d of s.order(rep)) {
      if (na[d.kind]) continue;
      try {
        await new Promise((r) => setTimeout(r, settleMs));
        const idle = sampleMemory(d);
        m.idleRss[d.kind].push(idle.rss);
        m.idlePss[d.kind].push(idle.pss);
        const one = ids(`m${rep}-one`, 1);
        await fleetUp(d, one, variant.args);
        await new Promise((r) => setTimeout(r, settleMs));
        const at1 = sampleMemory(d);
        if (at1.shims < 1) throw new Error(`${d.kind}: no shim for 1 container`);
        m.shim1[d.kind].push(at1.shimPss);
        m.shimRss1[d.kind].push(at1.shimRss);
        await fleetDown(d, one);
        const many = ids(`m${rep}-`, 20);
        await fleetUp(d, many, variant.args);
        await new Promise((r) => setTimeout(r, settleMs));
        const at20 = sampleMemory(d);
        // One shim per container (containerd), or a shared one (tainerd's default).
        if (at20.shims < 1) throw new Error(`${d.kind}: no shim for 20 containers`);
        m.rss20[d.kind].push(at20.rss);
        m.pss20[d.kind].push(at20.pss);
        m.shim20[d.kind].push(at20.shimPss / 20);
        await fleetDown(d, many);
      } catch (err) {
        na[d.kind] = (err as Error).message;
        await removeAllContainers(d).catch(() => {});
      }
    }
  }
  const r = (metric: string, x: Samples, note?: string) =>
    row({
      figure: 4,
      metric,
      unit: "MiB",
      better: "lower",
      containerd: cellOf(x, "containerd", na),
      tainerd: cellOf(x, "tainerd", na),
      note,
    });
  s.rows.push(
    r("daemon RSS, idle", m.idleRss),
    r("daemon PSS, idle", m.idlePss),
    r(`daemon RSS, 20 running containers (${variant.label})`, m.rss20),
    r("daemon PSS, 20 running containers", m.pss20),
    r("shim PSS per container, 1 running", m.shim1),
    r("shim RSS per container, 1 running", m.shimRss1),
    r("shim PSS per container, 20 running", m.shim20, "sum of the shims' PSS / 20"),
  );
}

/** 5. Daemon restart with 20 running containers until `ctr tasks ls` shows all RUNNING. */
export async function restart(s: Session): Promise<void> {
  const reps = s.opts.quick ? 1 : 3;
  const count = 20;
  const variant = await fleetVariant(s);
  const idle = samples();
  const loaded = samples();
  const na: Partial<Record<Kind, string>> = {};
  const restartUntil = async (d: BenchDaemon, ready: () => Promise<boolean>): Promise<number> => {
    await d.stop("SIGTERM");
    const t0 = await d.spawn();
    await d.waitConnectable(t0);
    await waitFor(ready, `${d.kind} to come back`, 120_000, 5);
    return performance.now() - t0;
  };
  // Idle: no containers; ready when `ctr version` answers.
  for (let rep = 0; rep < reps; rep++) {
    for (const d of s.order(rep)) {
      idle[d.kind].push(await restartUntil(d, async () => (await d.ctr(["version"])).code === 0));
    }
  }
  const fleet = ids("r", count);
  const shimCount: Partial<Record<Kind, number>> = {};
  for (const d of s.daemons) {
    try {
      await fleetUp(d, fleet, variant.args);
      shimCount[d.kind] = shimsOf(d.address).length;
    } catch (err) {
      na[d.kind] = (err as Error).message;
    }
  }
  for (let rep = 0; rep < reps; rep++) {
    for (const d of s.order(rep)) {
      if (na[d.kind]) continue;
      try {
        const ms = await restartUntil(d, async () => {
          const tasks = await d.tasks();
          return fleet.every((id) => tasks.get(id) === "RUNNING");
        });
        if (shimsOf(d.address).length !== shimCount[d.kind]) {
          throw new Error(`${d.kind} lost shims over a restart`);
        }
        loaded[d.kind].push(ms);
      } catch (err) {
        na[d.kind] = (err as Error).message;
      }
    }
  }
  for (const d of s.daemons) {
    if (!d.running) await d.start().catch(() => {});
    await fleetDown(d, fleet).catch(() => removeAllContainers(d));
  }
  s.rows.push(
    row({
      figure: 5,
      metric: "daemon restart, idle: spawn → `ctr version` answers",
      unit: "ms",
      better: "lower",
      containerd: idle.containerd,
      tainerd: idle.tainerd,
    }),
    row({
      figure: 5,
      metric:
        `daemon restart (SIGTERM) with ${count} running (${variant.label}): spawn → \`ctr tasks ls\` all RUNNING`,
      unit: "ms",
      better: "lower",
      containerd: cellOf(loaded, "containerd", na),
      tainerd: cellOf(loaded, "tainerd", na),
    }),
  );
}

/** A gRPC client of one daemon for figure 6. */
interface ApiClient {
  version: Client<typeof Version>;
  containers: Client<typeof Containers>;
  close(): void;
}

/**
 * The client of figure 6: `TainerdClient`'s stack (connect-node's gRPC transport over the unix
 * socket, one HTTP/2 session, the namespace header) but with connect-node's default keepalive.
 * `TainerdClient` itself passes `pingIntervalMs: 0`, which sends PINGs back to back while calls
 * are in flight: containerd then closes the connection (GOAWAY ENHANCE_YOUR_CALM,
 * "too_many_pings"; "Session closed with error code 11") within seconds, and both daemons
 * answer 10–25% fewer calls. Switch back to `TainerdClient` once that is fixed.
 */
function apiClient(address: string): ApiClient {
  const namespace: Interceptor = (next) => (req) => {
    req.header.set(NAMESPACE_HEADER, NAMESPACE);
    return next(req);
  };
  const sessions = new Http2SessionManager("http://localhost", {}, {
    createConnection: () => net.connect(address),
  });
  const transport = createGrpcTransport({
    baseUrl: "http://localhost",
    sessionManager: sessions,
    interceptors: [namespace],
  });
  return {
    version: createClient(Version, transport),
    containers: createClient(Containers, transport),
    close: () => sessions.abort(),
  };
}

/** Calls `call` from `concurrency` loops for `ms`; calls per second. */
async function hammer(
  call: () => Promise<unknown>,
  concurrency: number,
  ms: number,
): Promise<number> {
  let count = 0;
  let failure: unknown;
  const t0 = performance.now();
  const end = t0 + ms;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end && failure === undefined) {
      try {
        await call();
        count++;
      } catch (err) {
        failure = err;
      }
    }
  }));
  if (failure !== undefined) throw failure;
  return count / ((performance.now() - t0) / 1000);
}

/** What h2load (nghttp2's native load generator) measured for one gRPC method. */
interface H2loadResult {
  /** Calls per second. */
  rps: number;
  /** Mean time per call, in microseconds. */
  meanUs: number;
}

/**
 * `h2load` of a unary gRPC call with an empty request over one connection, `inFlight` streams
 * at once: the server's own cost, with a client that barely uses any CPU. Every call must
 * answer 200 (gRPC errors are checked beforehand with ctr).
 */
async function h2load(
  s: Session,
  address: string,
  path: string,
  requests: number,
  inFlight: number,
): Promise<H2loadResult> {
  const body = `${s.dir}/empty.grpc`;
  await Deno.writeFile(body, new Uint8Array(5)); // an uncompressed, empty message
  const r = await mustExec("h2load", [
    "-B",
    `unix:${address}`,
    "-n",
    String(requests),
    "-c",
    "1",
    "-m",
    String(inFlight),
    "-d",
    body,
    "-H",
    "content-type: application/grpc",
    "-H",
    "te: trailers",
    "-H",
    `containerd-namespace: ${NAMESPACE}`,
    `http://localhost${path}`,
  ]);
  const rps = Number(/finished in [\d.]+m?s, ([\d.]+) req\/s/.exec(r.stdout)?.[1]);
  const ok = Number(/status codes: (\d+) 2xx/.exec(r.stdout)?.[1]);
  const mean = /time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b/.exec(r.stdout);
  if (!rps || ok !== requests || !mean) throw new Error(`h2load: unexpected output:\n${r.stdout}`);
  const scale = mean[2] === "us" ? 1 : mean[2] === "ms" ? 1000 : 1e6;
  return { rps, meanUs: Number(mean[1]) * scale };
}

/** 6. API round trips per second: Version and Containers/List, 16 calls in flight. */
export async function apiRoundTrip(s: Session): Promise<void> {
  const reps = s.opts.quick ? 1 : 3;
  const seconds = s.opts.smoke ? 0.5 : s.opts.quick ? 2 : 5;
  const concurrency = 16;
  const listed = 10;
  for (const d of s.daemons) {
    for (const id of ids("api", listed)) {
      await d.mustCtr(["containers", "create", "--rootfs", s.rootfs, id, "/bin/true"]);
    }
  }
  const clients = {
    containerd: apiClient(s.containerd.address),
    tainerd: apiClient(s.tainerd.address),
  };
  const version = samples();
  const list = samples();
  try {
    const calls = (k: Kind) => {
      const c = clients[k];
      return {
        version: () => c.version.version({}),
        list: async () => {
          const res = await c.containers.list({});
          if (res.containers.length !== listed) throw new Error(`listed ${res.containers.length}`);
        },
      };
    };
    // Warm both connections up.
    for (const k of ["containerd", "tainerd"] as Kind[]) {
      await hammer(calls(k).version, concurrency, 300);
      await hammer(calls(k).list, concurrency, 300);
    }
    for (let rep = 0; rep < reps; rep++) {
      for (const d of s.order(rep)) {
        version[d.kind].push(await hammer(calls(d.kind).version, concurrency, seconds * 1000));
      }
      for (const d of s.order(rep + 1)) {
        list[d.kind].push(await hammer(calls(d.kind).list, concurrency, seconds * 1000));
      }
    }
  } finally {
    clients.containerd.close();
    clients.tainerd.close();
  }
  // The same calls from h2load: the servers' own cost (the Deno client above is a large share
  // of the CPU it measures).
  const h2 = { version16: samples(), list16: samples(), version1: samples() };
  const h2na: Partial<Record<Kind, string>> = {};
  const requests = s.opts.smoke ? 400 : s.opts.quick ? 2000 : 20000;
  try {
    for (let rep = 0; rep < reps; rep++) {
      for (const d of s.order(rep)) {
        const v = "/containerd.services.version.v1.Version/Version";
        const l = "/containerd.services.containers.v1.Containers/List";
        h2.version16[d.kind].push((await h2load(s, d.address, v, requests, 16)).rps);
        h2.list16[d.kind].push((await h2load(s, d.address, l, requests / 4, 16)).rps);
        h2.version1[d.kind].push((await h2load(s, d.address, v, requests / 4, 1)).meanUs);
      }
    }
  } catch (err) {
    h2na.containerd = h2na.tainerd = (err as Error).message.split("\n")[0];
  } finally {
    for (const d of s.daemons) await d.ctr(["containers", "rm", ...ids("api", listed)]);
  }
  const h2note =
    `h2load (nghttp2-client), one connection, 16 streams in flight, ${requests} calls (List: a quarter)`;
  s.rows.push(
    row({
      figure: 6,
      metric: "`Version/Version` calls/s, h2load",
      unit: "calls/s",
      better: "higher",
      containerd: cellOf(h2.version16, "containerd", h2na),
      tainerd: cellOf(h2.version16, "tainerd", h2na),
      note: h2note,
    }),
    row({
      figure: 6,
      metric: `\`Containers/List\` (${listed} containers) calls/s, h2load`,
      unit: "calls/s",
      better: "higher",
      containerd: cellOf(h2.list16, "containerd", h2na),
      tainerd: cellOf(h2.list16, "tainerd", h2na),
    }),
    row({
      figure: 6,
      metric: "`Version/Version` round trip, one call at a time, h2load",
      unit: "µs",
      better: "lower",
      containerd: cellOf(h2.version1, "containerd", h2na),
      tainerd: cellOf(h2.version1, "tainerd", h2na),
      note: `mean time per call of ${requests / 4} sequential calls`,
    }),
  );
  const note =
    `connect-node gRPC client (TainerdClient's stack, default keepalive), one HTTP/2 connection, ${concurrency} in flight, ${seconds} s per run; the client shares the 2 CPUs`;
  s.rows.push(
    row({
      figure: 6,
      metric: "`Version/Version` calls/s",
      unit: "calls/s",
      better: "higher",
      containerd: version.containerd,
      tainerd: version.tainerd,
      note,
    }),
    row({
      figure: 6,
      metric: `\`Containers/List\` (${listed} containers) calls/s`,
      unit: "calls/s",
      better: "higher",
      containerd: list.containerd,
      tainerd: list.tainerd,
    }),
  );
}

/** Every figure by number. */
export const FIGURES: Record<number, { name: string; run: (s: Session) => Promise<void> }> = {
  1: { name: "run latency", run: runLatency },
  2: { name: "concurrent start and teardown", run: concurrentStart },
  3: { name: "pull", run: pull },
  4: { name: "memory", run: memory },
  5: { name: "restart", run: restart },
  6: { name: "API round trip", run: apiRoundTrip },
};

/** Marks every row of a figure that failed as a whole. */
export function failedFigure(s: Session, figure: number, err: unknown): void {
  const first = err instanceof Error ? err.message.split("\n")[0] : String(err);
  const reason = first.length > 160 ? `${first.slice(0, 160)}…` : first;
  s.rows.push(row({
    figure,
    metric: FIGURES[figure].name,
    unit: "",
    better: "lower",
    containerd: reason,
    tainerd: reason,
    note: "the figure failed",
  }));
}

/** The availability type, re-exported for the entry point. */
export type { Availability };
