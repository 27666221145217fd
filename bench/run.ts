/**
 * Side-by-side benchmarks of tainerd against containerd 1.6: a private containerd and a private
 * tainerd on temp dirs, driven by the same real `ctr` commands, interleaved.
 *
 * ```sh
 * deno task bench                  # every figure; writes bench/results/<date>.json, latest.md
 * deno task bench --quick --only 6 # a quick run of some figures (prints, saves nothing)
 * deno task bench --smoke          # every figure at toy sizes (tests/bench_smoke_test.ts)
 * ```
 *
 * Figures: 1 `ctr run --rm` latency (with `runc run` as the floor), 2 twenty concurrent
 * `ctr run -d` and their teardown, 3 pull of a large image from a loopback registry, 4 daemon
 * and shim memory, 5 daemon restart with running containers, 6 API calls per second.
 *
 * Options: `--quick` (fewer repetitions, smaller pull image), `--smoke` (toy sizes: proves every
 * figure still runs, measures nothing worth reading), `--only 1,4`, `--keep` (keep the
 * temp dir with the daemons' logs), `--no-save` (print only), `--per-container-shims` (tainerd
 * with runtime `shim_group = ""`, one shim per container as containerd, instead of its default
 * shared shim per namespace), `--from-source` (tainerd by `deno run main.ts` instead of the
 * bundle `deno task bundle` builds, which is what `tainerd install` installs).
 *
 * Everything it starts (daemons, shims, containers, mounts, registry, temp dir) is removed at
 * the end, on failure and on Ctrl-C.
 *
 * @module
 */

import { failedFigure, FIGURES } from "./lib/figures.ts";
import { machineFacts, markdown, type Results, updateReadme } from "./lib/report.ts";
import { exec } from "./lib/proc.ts";
import { type Options, Session } from "./lib/session.ts";

const HERE = new URL(".", import.meta.url).pathname;
const REPO = new URL("..", import.meta.url).pathname;

function usage(): never {
  console.error(
    "usage: deno task bench [--quick|--smoke] [--only 1,2,…] [--keep] [--no-save] [--per-container-shims] [--from-source]",
  );
  Deno.exit(2);
}

function parseArgs(args: string[]): Options & { save: boolean } {
  const opts: Options & { save: boolean } = { quick: false, keep: false, save: true };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--quick") opts.quick = true;
    else if (a === "--smoke") opts.quick = opts.smoke = true;
    else if (a === "--keep") opts.keep = true;
    else if (a === "--no-save") opts.save = false;
    else if (a === "--per-container-shims") opts.perContainerShims = true;
    else if (a === "--from-source") opts.fromSource = true;
    else if (a === "--only" || a.startsWith("--only=")) {
      const v = a === "--only" ? args[++i] : a.slice("--only=".length);
      if (!v) usage();
      opts.only = v.split(",").map(Number);
      if (opts.only.some((n) => !FIGURES[n])) usage();
    } else usage();
  }
  return opts;
}

/** Formats Markdown with the repository's deno fmt settings (so `deno fmt --check` passes). */
async function fmtMarkdown(text: string): Promise<string> {
  const r = await exec(Deno.execPath(), ["fmt", "--ext", "md", "-"], { stdin: text, cwd: REPO });
  return r.code === 0 ? r.stdout : text;
}

const opts = parseArgs(Deno.args);
const started = performance.now();
const session = await Session.open(opts);

// Ctrl-C / SIGTERM: clean up, then exit; a second signal exits at once.
let interrupted = false;
const onSignal = (sig: Deno.Signal) => async () => {
  if (interrupted) Deno.exit(130);
  interrupted = true;
  console.error(`\n${sig}: cleaning up…`);
  await session.cleanup();
  Deno.exit(130);
};
Deno.addSignalListener("SIGINT", onSignal("SIGINT"));
Deno.addSignalListener("SIGTERM", onSignal("SIGTERM"));

/**
 * Records a daemon that died (with its last log lines) and starts it again; one that a failed
 * figure left stopped (restart) is started again too.
 */
async function checkDaemons(when: string): Promise<void> {
  for (const d of session.daemons) {
    const crash = await d.crashed();
    if (crash) {
      console.error(`${when}: ${crash}`);
      session.incidents.push(`${when}: ${crash}`);
    }
    if (!d.running) await d.start();
  }
}

let failed = false;
try {
  const machine = await machineFacts();
  console.error(`tainerd bench in ${session.dir}: starting containerd and tainerd…`);
  await session.start();
  const v = await session.tainerd.ctr(["version"]);
  const ver = v.stdout.match(/Server:[\s\S]*?Version:\s*(\S+)[\s\S]*?Revision:\s*(\S*)/);
  machine.tainerd = ver ? `${ver[1]}${ver[2] ? ` (${ver[2].slice(0, 12)})` : ""}` : "unknown";
  const plugins = await session.tainerd.ctr(["plugins", "ls"]);
  // The services images need (the figures probe what they use themselves, too).
  const has = (type: string, id: string) =>
    new RegExp(`^${type.replaceAll(".", "\\.")}\\s+${id}\\s+\\S+\\s+ok`, "m").test(plugins.stdout);
  for (const id of ["snapshots", "diff"]) {
    session.availability[`${id} service`] = has("io.containerd.grpc.v1", id) ? "ok" : "missing";
  }

  for (const n of Object.keys(FIGURES).map(Number)) {
    if (!session.selected(n) || interrupted) continue;
    const t0 = performance.now();
    console.error(`figure ${n}: ${FIGURES[n].name}…`);
    try {
      await checkDaemons(`before figure ${n}`);
      await FIGURES[n].run(session);
      await checkDaemons(`during figure ${n}`);
    } catch (err) {
      if (interrupted) break;
      console.error(`figure ${n} failed: ${err instanceof Error ? err.stack : err}`);
      failedFigure(session, n, err);
    }
    console.error(`figure ${n}: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  if (!interrupted) {
    const results: Results = {
      machine,
      options: { quick: opts.quick, only: opts.only },
      availability: session.availability,
      incidents: session.incidents,
      rows: session.rows.sort((a, b) => a.figure - b.figure),
      elapsedS: (performance.now() - started) / 1000,
    };
    const table = await fmtMarkdown(markdown(results));
    console.log(table);
    const partial = opts.quick || opts.only !== undefined;
    if (opts.save && !partial) {
      await Deno.mkdir(`${HERE}results`, { recursive: true });
      const file = `${HERE}results/${machine.date.slice(0, 10)}.json`;
      await Deno.writeTextFile(file, JSON.stringify(results, null, 2) + "\n");
      await Deno.writeTextFile(`${HERE}results/latest.md`, table);
      await exec(Deno.execPath(), ["fmt", "--quiet", file], { cwd: REPO });
      const readme = await updateReadme(`${REPO}README.md`, table);
      console.error(`wrote ${file}, bench/results/latest.md${readme ? ", README.md" : ""}`);
    } else if (partial) {
      console.error("(--quick/--only: results not saved)");
    }
  }
} catch (err) {
  failed = true;
  console.error(`bench failed: ${err instanceof Error ? err.stack : err}`);
  for (const d of session.daemons) console.error(`--- ${d.kind} log:\n${await d.logTail()}`);
} finally {
  await session.cleanup();
}
if (failed) Deno.exit(1);
