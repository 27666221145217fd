/**
 * `deno task critest`: runs cri-tools' CRI validation suite (critest v1.37.0, built by
 * scripts/setup.sh) offline against tainerd's CRI plugin and, side by side, Debian's containerd
 * CRI, and writes `bench/results/critest.md` and `critest.json`.
 *
 * The setup, all on this host: a loopback `docker-registry` holding lookalikes of the images
 * critest pulls (bench/critest/images.ts), a hosts.toml mirror per upstream registry host
 * pointing at it (the CRI `registry.config_path`), a private CNI network (a bridge of its own
 * and a private /24, host-local state in the temp dir), and each daemon private (root, state
 * and socket in a temp dir; the stream server on 127.0.0.1). Each run writes a ginkgo JSON
 * report, parsed into passed/failed/skipped, with each failure's reason.
 *
 * Usage: `deno task critest [--only tainerd|containerd] [--focus RE] [--skip RE]
 * [--keep-logs DIR]`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { startRegistry } from "../images/remote/testdata/registry.ts";
import {
  buildLookalikes,
  OFFLINE_ONLY_IMAGES,
  pushLookalikes,
  writeHostsDir,
} from "./critest/images.ts";

const REPO = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
/** The critest binary. */
export const CRITEST = "/usr/local/bin/critest";
const CONTAINERD = "/usr/bin/containerd";
const CRICTL = "/usr/local/bin/crictl";

/**
 * Specs skipped in every run: host features this machine lacks or that would touch the host
 * beyond the private setup (they are reported as skipped, with the reason).
 */
export const DEFAULT_SKIP: Record<string, string> = {
  "AppArmor": "host feature: AppArmor is not enabled on this host",
  "SELinux": "host feature: SELinux is not enabled on this host",
  "NRI": "needs an NRI socket; neither tainerd nor the Debian containerd 1.6 run NRI",
  "UserNamespaces": "host feature: user-namespaced pods need idmapped mounts (runtime support)",
};

/** One spec's outcome. */
export interface SpecResult {
  name: string;
  state: "passed" | "failed" | "skipped" | "pending" | string;
  seconds: number;
  /** The failure message (first lines), for failed specs. */
  failure?: string;
  location?: string;
}

/** One daemon's run. */
export interface RunSummary {
  runtime: string;
  version: string;
  passed: number;
  failed: number;
  skipped: number;
  seconds: number;
  specs: SpecResult[];
}

interface Proc {
  child: Deno.ChildProcess;
  status: Promise<Deno.CommandStatus>;
}

function spawnLogged(cmd: string[], log: string, env?: Record<string, string>): Proc {
  const child = new Deno.Command("sh", {
    args: ["-c", 'exec "$@" >>"$0" 2>&1', log, ...cmd],
    stdin: "null",
    stdout: "null",
    stderr: "null",
    env,
  }).spawn();
  return { child, status: child.status };
}

async function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout) + d.decode(r.stderr) };
}

async function waitSocket(path: string, proc: Proc, timeoutMs: number): Promise<void> {
  let exited = false;
  proc.status.then(() => exited = true);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`daemon exited at start`);
    try {
      const c = await Deno.connect({ transport: "unix", path });
      c.close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`daemon socket ${path} did not come up`);
}

async function stopProc(proc: Proc, graceMs = 20_000): Promise<void> {
  try {
    proc.child.kill("SIGTERM");
  } catch {
    return;
  }
  const t = setTimeout(() => {
    try {
      proc.child.kill("SIGKILL");
    } catch { /* gone */ }
  }, graceMs);
  await proc.status;
  clearTimeout(t);
}

/** Writes a CNI conflist for a private bridge and /24; returns the bridge name. */
async function writeCniConf(dir: string): Promise<{ confDir: string; bridge: string }> {
  const r = crypto.getRandomValues(new Uint8Array(3));
  const bridge = `tndct${r[0].toString(16)}${r[1].toString(16)}`;
  const subnet = `10.${200 + (r[0] % 50)}.${r[2]}.0/24`;
  const confDir = `${dir}/net.d`;
  await Deno.mkdir(confDir, { recursive: true });
  await Deno.writeTextFile(
    `${confDir}/10-critest.conflist`,
    JSON.stringify({
      cniVersion: "1.0.0",
      name: "tainerd-critest",
      plugins: [
        {
          type: "bridge",
          bridge,
          isGateway: true,
          ipMasq: false,
          hairpinMode: true,
          ipam: {
            type: "host-local",
            ranges: [[{ subnet }]],
            routes: [{ dst: "0.0.0.0/0" }],
            dataDir: `${dir}/ipam`,
          },
        },
        { type: "portmap", capabilities: { portMappings: true } },
      ],
    }),
  );
  return { confDir, bridge };
}

/** The CRI section both daemons share (containerd 1.6 key names). */
function criSection(confDir: string, hostsDir: string, sandboxImage?: string): string {
  const q = JSON.stringify;
  return [
    `[plugins."io.containerd.grpc.v1.cri"]`,
    ...(sandboxImage ? [`  sandbox_image = ${q(sandboxImage)}`] : []),
    `  stream_server_address = "127.0.0.1"`,
    `  stream_server_port = "0"`,
    // This host denies lowering oom_score_adj (runc init fails to set the pause's -998).
    `  restrict_oom_score_adj = true`,
    `[plugins."io.containerd.grpc.v1.cri".cni]`,
    `  bin_dir = "/usr/lib/cni"`,
    `  conf_dir = ${q(confDir)}`,
    `[plugins."io.containerd.grpc.v1.cri".registry]`,
    `  config_path = ${q(hostsDir)}`,
    "",
  ].join("\n");
}

/** A daemon under critest. */
interface Daemon {
  name: string;
  socket: string;
  start(): Promise<void>;
  stop(): Promise<void>;
  log: string;
}

function tainerdDaemon(dir: string, cri: string): Daemon {
  const socket = `${dir}/tainerd.sock`;
  const log = `${dir}/tainerd.log`;
  let proc: Proc | undefined;
  return {
    name: "tainerd",
    socket,
    log,
    async start() {
      await Deno.mkdir(dir, { recursive: true });
      await Deno.writeTextFile(`${dir}/config.toml`, `version = 2\n${cri}`);
      proc = spawnLogged([
        Deno.execPath(),
        "run",
        "-A",
        "--config",
        `${REPO}/deno.json`,
        `${REPO}/main.ts`,
        "daemon",
        "--address",
        socket,
        "--root",
        `${dir}/root`,
        "--state",
        `${dir}/state`,
        "--config",
        `${dir}/config.toml`,
        "--log-level",
        "info",
      ], log);
      await waitSocket(socket, proc, 60_000);
    },
    async stop() {
      if (proc) await stopProc(proc);
    },
  };
}

function containerdDaemon(dir: string, cri: string): Daemon {
  const socket = `${dir}/containerd.sock`;
  const log = `${dir}/containerd.log`;
  let proc: Proc | undefined;
  const q = JSON.stringify;
  return {
    name: "containerd",
    socket,
    log,
    async start() {
      await Deno.mkdir(dir, { recursive: true });
      await Deno.writeTextFile(
        `${dir}/config.toml`,
        [
          "version = 2",
          `root = ${q(`${dir}/root`)}`,
          `state = ${q(`${dir}/state`)}`,
          "[grpc]",
          `  address = ${q(socket)}`,
          "[ttrpc]",
          `  address = ${q(`${socket}.ttrpc`)}`,
          `[plugins."io.containerd.internal.v1.opt"]`,
          `  path = ${q(`${dir}/opt`)}`,
          cri,
          `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]`,
          `  runtime_type = "io.containerd.runc.v2"`,
          `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]`,
          `  Root = ${q(`${dir}/runc`)}`,
        ].join("\n"),
      );
      proc = spawnLogged([CONTAINERD, "--config", `${dir}/config.toml`], log);
      await waitSocket(socket, proc, 60_000);
    },
    async stop() {
      if (proc) await stopProc(proc);
    },
  };
}

/** Removes every pod left behind (crictl), so the daemon stops with nothing running. */
async function cleanupPods(socket: string): Promise<void> {
  const ep = ["--runtime-endpoint", `unix://${socket}`, "--timeout", "60s"];
  await run(CRICTL, [...ep, "rmp", "-fa"]).catch(() => {});
}

interface GinkgoReport {
  SpecReports?: {
    ContainerHierarchyTexts?: string[];
    LeafNodeText?: string;
    LeafNodeType?: string;
    State: string;
    RunTime: number;
    Failure?: { Message?: string; Location?: { FileName?: string; LineNumber?: number } };
  }[];
}

/** Parses a ginkgo JSON report into spec results (It nodes only). */
export function parseReport(text: string): SpecResult[] {
  const suites = JSON.parse(text) as GinkgoReport[];
  const out: SpecResult[] = [];
  for (const s of suites) {
    for (const r of s.SpecReports ?? []) {
      if (r.LeafNodeType !== "It") continue;
      const name = [...(r.ContainerHierarchyTexts ?? []), r.LeafNodeText ?? ""].join(" ");
      const res: SpecResult = { name, state: r.State, seconds: r.RunTime / 1e9 };
      if (r.Failure) {
        res.failure = (r.Failure.Message ?? "").split("\n").slice(0, 6).join("\n");
        const loc = r.Failure.Location;
        if (loc?.FileName) {
          res.location = `${loc.FileName.replace(/.*cri-tools@[^/]+\//, "")}:${loc.LineNumber}`;
        }
      }
      out.push(res);
    }
  }
  return out;
}

/** Runs critest against a started daemon; returns its summary. */
async function runCritest(
  d: Daemon,
  dir: string,
  opts: { focus?: string; skip: string[] },
): Promise<RunSummary> {
  const report = `${dir}/${d.name}-report.json`;
  const ep = `unix://${d.socket}`;
  const args = [
    "--runtime-endpoint",
    ep,
    "--image-endpoint",
    ep,
    "--ginkgo.no-color",
    "--ginkgo.json-report",
    report,
    "--ginkgo.timeout",
    "2h",
  ];
  if (opts.focus) args.push("--ginkgo.focus", opts.focus);
  for (const s of opts.skip) args.push("--ginkgo.skip", s);
  const t0 = performance.now();
  const out = `${dir}/${d.name}-critest.log`;
  const proc = spawnLogged([CRITEST, ...args], out);
  await proc.status;
  const seconds = (performance.now() - t0) / 1000;
  const specs = parseReport(await Deno.readTextFile(report));
  const version = (await run(CRICTL, ["--runtime-endpoint", ep, "version"])).out;
  const count = (st: string) => specs.filter((s) => s.state === st).length;
  return {
    runtime: d.name,
    version: version.match(/RuntimeVersion:\s*(\S+)/)?.[1] ?? "?",
    passed: count("passed"),
    failed: specs.filter((s) =>
      s.state !== "passed" && s.state !== "skipped" &&
      s.state !== "pending"
    ).length,
    skipped: count("skipped") + count("pending"),
    seconds,
    specs,
  };
}

/** Why a spec does not pass: the explanations recorded in the results file. */
export const KNOWN_REASONS: { match: RegExp; reason: string }[] = [
  {
    match: /public image with digest/,
    reason: "offline-only: pulls the digest-pinned upstream " + OFFLINE_ONLY_IMAGES[0] +
      ", which no lookalike can reproduce",
  },
];

function reasonOf(s: SpecResult, reasons: Record<string, string>): string {
  for (const r of KNOWN_REASONS) if (r.match.test(s.name)) return r.reason;
  for (const [k, v] of Object.entries(DEFAULT_SKIP)) {
    if (s.name.includes(k) && s.state === "skipped") return v;
  }
  for (const [k, v] of Object.entries(reasons)) if (s.name.includes(k)) return v;
  if (s.state === "skipped") return "skipped by the suite itself";
  return (s.failure ?? "").split("\n")[0].slice(0, 200);
}

/** Renders the results file. */
export function renderMarkdown(
  runs: RunSummary[],
  reasons: Record<string, string>,
  date: string,
): string {
  const lines = [
    "# critest (cri-tools v1.37.0), offline",
    "",
    `Run ${date} by \`deno task critest\` (bench/critest.ts) on this host: loopback registry of`,
    "lookalike images (bench/critest/images.ts) behind hosts.toml mirrors for registry.k8s.io,",
    "k8s.gcr.io and gcr.io; a private CNI bridge and /24; each daemon private; serial (critest's default of one node; its `--parallel 1` trips ginkgo's go-test-parallel check).",
    `Skipped by \`--ginkgo.skip\`: ${
      Object.entries(DEFAULT_SKIP).map(([k, v]) => `\`${k}\` (${v})`).join("; ")
    }.`,
    "",
    "| runtime | version | passed | failed | skipped | total | time |",
    "|---|---|---:|---:|---:|---:|---:|",
    ...runs.map((r) =>
      `| ${r.runtime} | ${r.version} | ${r.passed} | ${r.failed} | ${r.skipped} | ${r.specs.length} | ${
        Math.round(r.seconds)
      } s |`
    ),
    "",
  ];
  for (const r of runs) {
    const notPassed = r.specs.filter((s) => s.state !== "passed" && s.state !== "skipped");
    lines.push(`## ${r.runtime}: specs that do not pass (${notPassed.length})`, "");
    if (notPassed.length === 0) lines.push("None.", "");
    for (const s of notPassed) {
      lines.push(
        `- **${s.name}** (${s.state}${s.location ? `, ${s.location}` : ""}): ${
          reasonOf(s, reasons)
        }`,
      );
    }
    lines.push("");
  }
  if (runs.length === 2) {
    const [a, b] = runs;
    const passA = new Set(a.specs.filter((s) => s.state === "passed").map((s) => s.name));
    const passB = new Set(b.specs.filter((s) => s.state === "passed").map((s) => s.name));
    const onlyB = [...passB].filter((n) => !passA.has(n));
    const onlyA = [...passA].filter((n) => !passB.has(n));
    lines.push(`## Passing on ${b.runtime} but not on ${a.runtime} (${onlyB.length})`, "");
    for (const n of onlyB) lines.push(`- ${n}`);
    lines.push("", `## Passing on ${a.runtime} but not on ${b.runtime} (${onlyA.length})`, "");
    for (const n of onlyA) lines.push(`- ${n}`);
    lines.push("");
  }
  return lines.join("\n");
}

/** Explanations of tainerd's and containerd's failures, beyond the failure message. */
async function loadReasons(): Promise<Record<string, string>> {
  try {
    return JSON.parse(
      await Deno.readTextFile(`${REPO}/bench/critest/reasons.json`),
    ) as Record<string, string>;
  } catch {
    return {};
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      only: { type: "string" },
      focus: { type: "string" },
      skip: { type: "string", multiple: true },
      "keep-logs": { type: "string" },
      out: { type: "string" },
    },
  });
  for (const bin of [CRITEST, CRICTL, "/usr/bin/docker-registry", "/usr/lib/cni/bridge"]) {
    try {
      Deno.statSync(bin);
    } catch {
      console.error(`critest: ${bin} is missing (run scripts/setup.sh)`);
      Deno.exit(2);
    }
  }
  const which = values.only ? [values.only] : ["tainerd", "containerd"];
  const dir = await Deno.makeTempDir({ prefix: "tainerd-critest-" });
  await Deno.chmod(dir, 0o755);
  const registry = await startRegistry();
  const { confDir, bridge } = await writeCniConf(dir);
  const runs: RunSummary[] = [];
  const skip = [Object.keys(DEFAULT_SKIP).join("|"), ...(values.skip ?? [])];
  try {
    console.error(`critest: building lookalike images, registry ${registry.host}`);
    const images = await buildLookalikes(dir);
    await pushLookalikes(images, registry.host);
    const hostsDir = `${dir}/certs.d`;
    await writeHostsDir(hostsDir, registry.host);
    for (const name of which) {
      const ddir = `${dir}/${name}`;
      const d = name === "tainerd"
        ? tainerdDaemon(ddir, criSection(confDir, hostsDir))
        : containerdDaemon(ddir, criSection(confDir, hostsDir, "registry.k8s.io/pause:3.9"));
      console.error(`critest: running against ${name} (${ddir})`);
      await d.start();
      try {
        const r = await runCritest(d, dir, { focus: values.focus, skip });
        console.error(
          `critest: ${name}: ${r.passed} passed, ${r.failed} failed, ${r.skipped} skipped ` +
            `in ${Math.round(r.seconds)} s`,
        );
        runs.push(r);
      } finally {
        await cleanupPods(d.socket);
        await d.stop();
        if (values["keep-logs"]) {
          await Deno.mkdir(values["keep-logs"], { recursive: true });
          for (const f of [d.log, `${dir}/${name}-critest.log`, `${dir}/${name}-report.json`]) {
            await Deno.copyFile(f, `${values["keep-logs"]}/${f.split("/").at(-1)}`)
              .catch(() => {});
          }
        }
      }
    }
  } finally {
    await registry.stop();
    await run("ip", ["link", "del", bridge]).catch(() => {});
    // Unmount whatever a daemon left under the temp dir, deepest first, then remove it.
    const mounts = (await Deno.readTextFile("/proc/self/mountinfo")).split("\n")
      .map((l) => l.split(" ")[4]).filter((m) => m?.startsWith(dir)).sort().reverse();
    for (const m of mounts) await run("umount", ["-l", m]);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const outDir = values.out ?? `${REPO}/bench/results`;
  await Deno.mkdir(outDir, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  const reasons = await loadReasons();
  await Deno.writeTextFile(`${outDir}/critest.md`, renderMarkdown(runs, reasons, date));
  await Deno.writeTextFile(
    `${outDir}/critest.json`,
    JSON.stringify({ date, critest: "v1.37.0", runs }, null, 2) + "\n",
  );
  // Keep the results file as `deno fmt` wants it (the repository's check covers it).
  await run(Deno.execPath(), ["fmt", "--quiet", `${outDir}/critest.md`]).catch(() => {});
  console.error(`critest: wrote ${outDir}/critest.md`);
}

if (import.meta.main) await main();
