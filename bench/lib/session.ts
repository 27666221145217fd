/**
 * One benchmark run: a temp directory, the two private daemons, the test images and the
 * registry (made on first use), the rows measured so far, and a cleanup that removes
 * everything (containers, shims, runc state, mounts, daemons, registry, temp dir) whether the
 * run ends, fails or is interrupted.
 *
 * @module
 */

import { type RunningRegistry, startRegistry } from "../../images/remote/testdata/registry.ts";
import { busyboxRootfs } from "../../tests/fixtures.ts";
import { BenchDaemon, type Kind, NAMESPACE } from "./daemons.ts";
import { archiveLayout, buildBusyboxImage } from "./images.ts";
import { childrenOf, delay, exec, reasonOf, shimsOf, signal, waitFor } from "./proc.ts";
import type { Row } from "./stats.ts";

/** Command-line options. */
export interface Options {
  /** Fewer repetitions and a smaller pull image: a smoke run. */
  quick: boolean;
  /** The smallest sizes that still run every code path (the test suite's smoke run). */
  smoke?: boolean;
  /** Only these figures (1–6). */
  only?: number[];
  /** Keep the temp dir (logs) after the run. */
  keep: boolean;
  /** Run tainerd with one shim per container (runtime `shim_group = ""`, containerd's way). */
  perContainerShims?: boolean;
  /** Run tainerd from the source tree (`deno run main.ts`) instead of its bundle. */
  fromSource?: boolean;
}

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

/** The namespace pulls work in (wiped between repetitions). */
export const PULL_NAMESPACE = "bench-pull";

/** The name the busybox image is imported as. */
export const RUN_IMAGE = "bench.local/busybox:latest";

/** Whether a daemon can do something: true, or the reason it cannot. */
export type Availability = true | string;

/** A benchmark run. */
export class Session {
  readonly opts: Options;
  readonly dir: string;
  readonly containerd: BenchDaemon;
  readonly tainerd: BenchDaemon;
  readonly rows: Row[] = [];
  /** Prerequisites probed on tainerd (for the report). */
  readonly availability: Record<string, string> = {};
  /** Daemons that died during the run, with their last log lines. */
  readonly incidents: string[] = [];
  /** A busybox root filesystem for `--rootfs` runs and the runc floor. */
  rootfs = "";
  #runImage?: Promise<Record<Kind, Availability>>;
  #registry?: Promise<RunningRegistry>;
  #cleaned?: Promise<void>;

  private constructor(opts: Options, dir: string) {
    this.opts = opts;
    this.dir = dir;
    this.containerd = new BenchDaemon("containerd", `${dir}/c`);
    this.tainerd = new BenchDaemon("tainerd", `${dir}/t`, {
      perContainerShims: opts.perContainerShims,
      bundle: opts.fromSource ? undefined : `${dir}/dist/tainerd.js`,
    });
  }

  /** Creates the temp dir, the rootfs, and starts both daemons. */
  static async open(opts: Options): Promise<Session> {
    // Short paths: unix sockets (shims' included) must fit in 108 bytes.
    const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "tbench-" });
    const s = new Session(opts, dir);
    return s;
  }

  /** Starts the daemons (after {@link open}, so a failure here is still cleaned up). */
  async start(): Promise<void> {
    if (!this.opts.fromSource) {
      // tainerd as users install it: the one-file bundle (`deno task bundle`), shims included.
      const r = await exec(Deno.execPath(), [
        "run",
        "-A",
        `${REPO}/scripts/build.ts`,
        "bundle",
        "--out-dir",
        `${this.dir}/dist`,
      ]);
      if (r.code !== 0) throw new Error(`deno task bundle failed: ${r.stderr || r.stdout}`);
    }
    this.rootfs = await busyboxRootfs(`${this.dir}/busybox`);
    for (const d of this.daemons) {
      await d.prepare();
      await d.start();
    }
  }

  /** Both daemons, containerd first. */
  get daemons(): BenchDaemon[] {
    return [this.containerd, this.tainerd];
  }

  /** The daemons in the order of repetition `i`: alternating, so drift hits both alike. */
  order(i: number): BenchDaemon[] {
    return i % 2 === 0 ? [this.containerd, this.tainerd] : [this.tainerd, this.containerd];
  }

  /** Whether a figure is selected. */
  selected(figure: number): boolean {
    return !this.opts.only || this.opts.only.includes(figure);
  }

  /**
   * The busybox image imported into both daemons (`ctr images import`) and probed with
   * `ctr run --rm IMG … true`: per daemon, true or why not.
   */
  runImage(): Promise<Record<Kind, Availability>> {
    this.#runImage ??= (async () => {
      const image = await buildBusyboxImage(`${this.dir}/images/busybox`);
      const archive = `${this.dir}/images/busybox.tar`;
      await archiveLayout(image, archive);
      const out = {} as Record<Kind, Availability>;
      for (const d of this.daemons) {
        const imp = await d.ctr([
          "images",
          "import",
          "--base-name",
          "bench.local/busybox",
          archive,
        ]);
        if (imp.code !== 0) {
          out[d.kind] = `ctr images import: ${reasonOf(imp)}`;
          continue;
        }
        const run = await d.ctr(["run", "--rm", ...d.runFlags(), RUN_IMAGE, "probe", "/bin/true"]);
        out[d.kind] = run.code === 0 ? true : `ctr run --rm IMG: ${reasonOf(run)}`;
      }
      this.availability["run from image"] = out.tainerd === true ? "ok" : out.tainerd;
      return out;
    })();
    return this.#runImage;
  }

  /** The loopback registry (started on first use). */
  registry(): Promise<RunningRegistry> {
    this.#registry ??= startRegistry();
    return this.#registry;
  }

  /** Removes everything this run made; safe to call more than once and concurrently. */
  cleanup(): Promise<void> {
    this.#cleaned ??= this.#cleanup();
    return this.#cleaned;
  }

  async #cleanup(): Promise<void> {
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        console.error(`cleanup: ${what}: ${err instanceof Error ? err.message : err}`);
      }
    };
    for (const d of this.daemons) {
      if (d.running) {
        await step(`${d.kind} containers`, () => removeAllContainers(d));
      }
      // Whatever is left (daemon gone, or a delete failed): kill the shims' children, then them.
      await step(`${d.kind} shims`, async () => {
        const shims = shimsOf(d.address);
        for (const shim of shims) for (const c of childrenOf(shim)) signal(c, "SIGKILL");
        for (const shim of shims) signal(shim, "SIGKILL");
        if (shims.length) await delay(500);
      });
      await step(`${d.kind} runc state`, () => deleteRuncState(d.runcRoot));
      await step(`${d.kind} stop`, () => d.stop());
    }
    await step("mounts", () => unmountUnder(this.dir));
    if (this.#registry) await step("registry", async () => (await this.#registry)?.stop());
    if (!this.opts.keep) {
      await step("temp dir", () => Deno.remove(this.dir, { recursive: true }));
    } else {
      console.error(`kept ${this.dir}`);
    }
  }
}

/** Kills and deletes every task and container of the bench namespaces. */
export async function removeAllContainers(d: BenchDaemon): Promise<void> {
  for (const namespace of [NAMESPACE, PULL_NAMESPACE]) {
    const tasks = await d.tasks(namespace);
    await Promise.all(
      [...tasks.keys()].map((id) =>
        d.ctr(["tasks", "rm", "-f", id], { namespace, timeoutMs: 30_000 })
      ),
    );
    const ls = await d.ctr(["containers", "ls", "-q"], { namespace });
    const ids = ls.stdout.trim().split("\n").filter((x) => x);
    if (ids.length) await d.ctr(["containers", "rm", ...ids], { namespace, timeoutMs: 30_000 });
  }
}

/** `runc delete -f` of every container left in a runc root (each namespace below it). */
async function deleteRuncState(runcRoot: string): Promise<void> {
  let namespaces: string[];
  try {
    namespaces = [...Deno.readDirSync(runcRoot)].filter((e) => e.isDirectory).map((e) => e.name);
  } catch {
    return;
  }
  for (const ns of namespaces) {
    const root = `${runcRoot}/${ns}`;
    const list = await exec("runc", ["--root", root, "list", "-q"]);
    for (const id of list.stdout.trim().split("\n").filter((x) => x)) {
      await exec("runc", ["--root", root, "delete", "-f", id]);
    }
  }
}

/** Unmounts everything mounted below a directory, deepest first. */
async function unmountUnder(dir: string): Promise<void> {
  const mountinfo = await Deno.readTextFile("/proc/self/mountinfo");
  const points = mountinfo.trim().split("\n")
    .map((l) =>
      l.split(" ")[4].replace(/\\(\d{3})/g, (_, o) => String.fromCharCode(parseInt(o, 8)))
    )
    .filter((p) => p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const p of points) {
    const r = await exec("umount", [p]);
    if (r.code !== 0) await exec("umount", ["-l", p]);
  }
}

/**
 * Waits until a daemon's shims serve no container any more (after its tasks were deleted):
 * each shim has exited, or (tainerd's shared shim, kept warm) has no child process left.
 */
export function waitNoShims(d: BenchDaemon, timeoutMs = 20_000): Promise<number> {
  return waitFor(
    () => shimsOf(d.address).every((shim) => childrenOf(shim).length === 0),
    `${d.kind}'s shims to exit or go idle`,
    timeoutMs,
    50,
  );
}
