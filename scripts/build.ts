/**
 * Builds tainerd into one file that needs neither the source tree, node_modules nor the
 * network at run time:
 *
 * ```sh
 * deno run -A scripts/build.ts bundle  [--out-dir dist]  # dist/tainerd.js, dist/chunks/,
 *                                                        # dist/tainerd (sh)
 * deno run -A scripts/build.ts compile [--out-dir dist]  # dist/tainerd, a standalone binary
 * ```
 *
 * Both also write `dist/containerd-shim-tainerd-v2`, the shim under the name containerd looks
 * up on PATH for the runtime `io.containerd.tainerd.v2` (a launcher of `tainerd.js shim` for
 * the bundle, a symlink to the binary for compile): put it on containerd's PATH and run
 * `ctr run --runtime io.containerd.tainerd.v2 …`.
 *
 * (`deno task bundle`, `deno task compile`.) Both start from a generated entry point that
 * stamps the git revision and calls `main.ts`'s `run()`; it lives in a scratch directory under
 * `dist/` (ignored by git) for the duration of the build, so the tree is never left dirty.
 *
 * `bundle` is `deno bundle --platform deno --code-splitting`: every module and JSON import in
 * `tainerd.js` and the chunks it loads from `chunks/` beside it as each role needs them (the
 * shim, the CLI, the daemon), run with `deno run -A --no-config dist/tainerd.js`, or through
 * the `dist/tainerd` wrapper; copy `tainerd.js` with its `chunks/`. `compile` is `deno compile` of that bundle; it needs the
 * `denort` runtime of this exact Deno version, which Deno downloads: offline, point
 * `DENORT_BIN` at a local copy.
 *
 * @module
 */

import { resolve } from "node:path";
import { BUNDLE_CHUNKS_DIR } from "../version.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const decoder = new TextDecoder();

/**
 * The `dist/tainerd` wrapper of a bundle: runs `tainerd.js` beside it (symlinks resolved), with
 * a 1 MiB V8 young generation and V8's `gc` exposed unless `DENO_V8_FLAGS` says otherwise (the
 * daemon's resident memory: 152 → 101 MiB measured after some runs, API throughput unchanged;
 * `gc` lets the idle reclaimer of sys/reclaim.ts collect fully; its shims inherit both).
 */
export const BUNDLE_WRAPPER = `#!/bin/sh
# tainerd, bundled: runs tainerd.js (beside this script) with Deno.
here=$(dirname "$(readlink -f "$0")")
export DENO_NO_UPDATE_CHECK=1
export DENO_V8_FLAGS="\${DENO_V8_FLAGS:---max-semi-space-size=1,--expose-gc}"
exec "\${TAINERD_DENO:-deno}" run -A --no-config "$here/tainerd.js" "$@"
`;

/** The file name containerd resolves the runtime `io.containerd.tainerd.v2` to. */
export const SHIM_BINARY_NAME = "containerd-shim-tainerd-v2";

/**
 * The `dist/containerd-shim-tainerd-v2` launcher of a bundle: tainerd.js's shim (beside this
 * script, symlinks resolved), for containerd to run as a shim v2 binary.
 */
export const BUNDLE_SHIM_WRAPPER = `#!/bin/sh
# tainerd's shim, bundled, as containerd's shim v2 binary for io.containerd.tainerd.v2.
here=$(dirname "$(readlink -f "$0")")
export DENO_NO_UPDATE_CHECK=1
exec "\${TAINERD_DENO:-deno}" run -A --no-config "$here/tainerd.js" shim "$@"
`;

/** The revision to stamp: `TAINERD_REVISION`, else `git rev-parse` (".m" when modified). */
export function buildRevision(): string {
  const fromEnv = Deno.env.get("TAINERD_REVISION");
  if (fromEnv) return fromEnv;
  const git = (...args: string[]) => {
    try {
      return new Deno.Command("git", {
        args: ["-C", ROOT, ...args],
        stdout: "piped",
        stderr: "null",
      })
        .outputSync();
    } catch {
      return null;
    }
  };
  const head = git("rev-parse", "--short=12", "HEAD");
  if (!head?.success) return "";
  const dirty = git("diff", "--no-ext-diff", "--quiet", "HEAD", "--");
  return decoder.decode(head.stdout).trim() + (dirty && !dirty.success ? ".m" : "");
}

async function exec(cmd: string, args: string[], env?: Record<string, string>): Promise<string> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd: ROOT,
    env,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = decoder.decode(out.stdout) + decoder.decode(out.stderr);
  if (!out.success) throw new BuildError(`${cmd} ${args.join(" ")} failed:\n${text.trim()}`);
  return text;
}

/** A build failure with a message meant for the person running the build. */
export class BuildError extends Error {}

/** Writes `data` to `path` atomically (a temp file renamed over it). */
async function install(path: string, data: Uint8Array | string, mode: number): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}`;
  if (typeof data === "string") await Deno.writeTextFile(tmp, data, { mode });
  else await Deno.writeFile(tmp, data, { mode });
  await Deno.chmod(tmp, mode);
  await Deno.rename(tmp, path);
}

/** The directory beside `tainerd.js` that holds its chunks. */
const CHUNKS_DIR = BUNDLE_CHUNKS_DIR;

/** A bundle: the entry file and its chunks (file name → text). */
export interface Bundle {
  entry: string;
  chunks: Map<string, string>;
}

/**
 * esbuild's CommonJS shim imports `node:module` at the top of the shared runtime chunk, which
 * every entry imports: that alone loaded Deno's Node compatibility layer (~14 ms) into every
 * process, shims included. Only commander (the CLI) is CommonJS, and it requires builtins
 * only, so `require` becomes a lookup of builtins that costs nothing until called.
 */
function lazyRequire(js: string): string {
  return js.replace(
    /import \{ createRequire as (\w+) \} from "node:module";\nvar __require = \1\(import\.meta\.url\);/,
    `var __require = (id) => {
  const m = globalThis.process?.getBuiltinModule?.(id);
  if (m === undefined) throw new Error(\`tainerd bundle: cannot require "\${id}"\`);
  return m;
};`,
  );
}

/**
 * Bundles main.ts, stamped with `revision`, with code splitting: `tainerd.js` (with a
 * `deno run` shebang line) loads its chunks from `chunks/` beside it as it needs them, so a shim
 * evaluates the shim's modules only, without the daemon's, the CLI's or Node's (start-up
 * 80 → ~35 ms), and a CLI command does not load the shim.
 */
async function bundleInto(scratch: string, revision: string): Promise<Bundle> {
  // The scratch directory is <repo>/dist/.build-*: the sources are two levels up.
  const entry = `${scratch}/entry.ts`;
  await Deno.writeTextFile(
    entry,
    `// Generated by scripts/build.ts for one build, then removed.
import { stampBuild } from "../../version.ts";
import { run } from "../../main.ts";

stampBuild({ revision: ${JSON.stringify(revision)}, bundled: true });
await run(Deno.args);
`,
  );
  const outDir = `${scratch}/out`;
  await exec(Deno.execPath(), [
    "bundle",
    "--quiet",
    "--platform",
    "deno",
    "--config",
    `${ROOT}/deno.json`,
    "--frozen",
    "--code-splitting",
    "--outdir",
    outDir,
    entry,
  ]);
  const chunks = new Map<string, string>();
  let js = "";
  for await (const e of Deno.readDir(outDir)) {
    if (!e.isFile || !e.name.endsWith(".js")) continue;
    const text = lazyRequire(await Deno.readTextFile(`${outDir}/${e.name}`));
    if (e.name === "entry.js") js = text;
    else chunks.set(e.name, text);
  }
  if (js === "") throw new BuildError(`deno bundle wrote no entry.js into ${outDir}`);
  // The entry's imports of its chunks point into chunks/ (the chunks import each other as
  // siblings, unchanged).
  for (const name of chunks.keys()) {
    js = js.replaceAll(`"./${name}"`, `"./${CHUNKS_DIR}/${name}"`);
  }
  return {
    entry: `#!/usr/bin/env -S deno run -A --no-config\n${js.replace(/^#!.*\n/, "")}`,
    chunks,
  };
}

/**
 * Writes `bundle` to `dir`: `chunks/` first (a fresh directory swapped in), then `tainerd.js`.
 */
async function writeBundle(dir: string, bundle: Bundle): Promise<void> {
  const fresh = `${dir}/.${CHUNKS_DIR}.tmp-${Deno.pid}`;
  await Deno.remove(fresh, { recursive: true }).catch(() => {});
  await Deno.mkdir(fresh, { recursive: true });
  for (const [name, text] of bundle.chunks) {
    await Deno.writeTextFile(`${fresh}/${name}`, text, { mode: 0o644 });
  }
  const old = `${dir}/.${CHUNKS_DIR}.old-${Deno.pid}`;
  await Deno.rename(`${dir}/${CHUNKS_DIR}`, old).catch(() => {});
  await Deno.rename(fresh, `${dir}/${CHUNKS_DIR}`);
  await Deno.remove(old, { recursive: true }).catch(() => {});
  await install(`${dir}/tainerd.js`, bundle.entry, 0o755);
}

/** Where `deno compile` looks for, or downloads, this Deno's denort archive. */
function denortArchive(): string {
  return `denort-${Deno.build.target}.zip`;
}

function denortHelp(): string {
  const v = Deno.version.deno;
  return `deno compile needs denort, the Deno ${v} runtime for ${Deno.build.target}, and could ` +
    `not get one (it downloads it; this machine may be offline).\n` +
    `On a connected machine, download https://dl.deno.land/release/v${v}/${denortArchive()}, ` +
    `unzip it, carry the denort binary here and run:\n` +
    `  DENORT_BIN=/path/to/denort deno task compile\n` +
    `(or use the bundle, which needs only deno: deno task bundle)`;
}

/** Options of {@linkcode build}. */
export interface BuildOptions {
  /** "bundle" (tainerd.js + sh wrapper) or "compile" (a standalone binary). */
  kind: "bundle" | "compile";
  /** Output directory (default `<repo>/dist`). */
  outDir?: string;
  /** Revision to stamp (default {@linkcode buildRevision}). */
  revision?: string;
}

/** Builds; returns the paths written. */
export async function build(opts: BuildOptions): Promise<string[]> {
  const outDir = resolve(opts.outDir ?? `${ROOT}/dist`);
  const revision = opts.revision ?? buildRevision();
  const denort = Deno.env.get("DENORT_BIN");
  if (opts.kind === "compile" && denort) {
    try {
      if (!(await Deno.stat(denort)).isFile) throw new Error("not a file");
    } catch {
      throw new BuildError(`DENORT_BIN="${denort}" is not a denort binary.\n${denortHelp()}`);
    }
  }
  await Deno.mkdir(outDir, { recursive: true });
  await Deno.mkdir(`${ROOT}/dist`, { recursive: true });
  const scratch = await Deno.makeTempDir({ dir: `${ROOT}/dist`, prefix: ".build-" });
  try {
    const bundle = await bundleInto(scratch, revision);
    if (opts.kind === "bundle") {
      await writeBundle(outDir, bundle);
      await install(`${outDir}/tainerd`, BUNDLE_WRAPPER, 0o755);
      await install(`${outDir}/${SHIM_BINARY_NAME}`, BUNDLE_SHIM_WRAPPER, 0o755);
      return [
        `${outDir}/tainerd.js`,
        `${outDir}/${CHUNKS_DIR}/`,
        `${outDir}/tainerd`,
        `${outDir}/${SHIM_BINARY_NAME}`,
      ];
    }
    await writeBundle(scratch, bundle);
    const bin = `${scratch}/tainerd`;
    try {
      await exec(
        Deno.execPath(),
        [
          "compile",
          "-A",
          "--no-config",
          "--quiet",
          "--include",
          `${scratch}/${CHUNKS_DIR}`,
          "-o",
          bin,
          `${scratch}/tainerd.js`,
        ],
        { DENO_NO_UPDATE_CHECK: "1" },
      );
    } catch (err) {
      if (denort) throw err;
      throw new BuildError(`${denortHelp()}\n\n${(err as Error).message}`);
    }
    await install(`${outDir}/tainerd`, await Deno.readFile(bin), 0o755);
    // The compiled binary runs as the shim when invoked under the shim's name.
    const link = `${outDir}/${SHIM_BINARY_NAME}`;
    await Deno.remove(link).catch(() => {});
    await Deno.symlink("tainerd", link);
    return [`${outDir}/tainerd`, link];
  } finally {
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
}

function usage(): never {
  console.error("usage: deno run -A scripts/build.ts bundle|compile [--out-dir DIR]");
  Deno.exit(2);
}

if (import.meta.main) {
  const [kind, ...rest] = Deno.args;
  if (kind !== "bundle" && kind !== "compile") usage();
  let outDir: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--out-dir" && rest[i + 1]) outDir = rest[++i];
    else if (rest[i].startsWith("--out-dir=")) outDir = rest[i].slice("--out-dir=".length);
    else usage();
  }
  try {
    const revision = buildRevision();
    const paths = await build({ kind, outDir, revision });
    console.log(`built ${paths.join(", ")} (revision ${revision || "unknown"})`);
  } catch (err) {
    console.error(`build: ${err instanceof BuildError ? err.message : String(err)}`);
    Deno.exit(1);
  }
}
