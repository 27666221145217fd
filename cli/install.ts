/**
 * `tainerd install`: puts a build of tainerd, its systemd unit and a default config in place,
 * starting nothing. Idempotent: run it again to upgrade; an existing config is kept.
 *
 * ```
 * tainerd install [--prefix /usr/local] [--config-dir /etc/tainerd]
 *                 [--systemd-dir /etc/systemd/system] [--root DIR] [--from PATH]
 * ```
 *
 * What it installs is the running build (a compiled binary, or a bundle run by Deno) unless
 * `--from` names another (`dist/`, `dist/tainerd` or `dist/tainerd.js`):
 *
 * - compiled: `<prefix>/bin/tainerd`;
 * - bundle: `<prefix>/lib/tainerd/tainerd.js` with its `chunks/`, and a `<prefix>/bin/tainerd`
 *   shell wrapper that runs it with the Deno that ran the install (else `deno` on PATH);
 * - `<systemd-dir>/tainerd.service` (contrib/tainerd.service, ExecStart following the paths);
 * - `<config-dir>/config.toml` (`tainerd config default`) unless one exists.
 *
 * `--root` stages everything under another directory (like DESTDIR); the paths written into
 * the files stay those of the target system.
 *
 * Install records what it put in place, with each file's SHA-256, in
 * `<prefix>/lib/tainerd/install-manifest.json`. `tainerd uninstall` removes exactly those files
 * (never a file the manifest does not list, nor one changed since), keeps the config unless
 * `--purge-config`, and never touches data (/var/lib/tainerd, /run/tainerd).
 *
 * @module
 */

import { Command } from "commander";
import { createHash } from "node:crypto";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import UNIT from "../contrib/tainerd.service" with { type: "text" };
import { DEFAULT_CONFIG_PATH, formatDefaultConfig } from "../config/config.ts";
import { failedPrecondition, invalidArgument } from "../plugins/errdefs.ts";
import { BUILTINS } from "../plugins/builtins.ts";
import { BUNDLE_CHUNKS_DIR, isBundled } from "../version.ts";

/** contrib/tainerd.service as shipped: ExecStart=/usr/local/bin/tainerd daemon. */
export const SYSTEMD_UNIT: string = UNIT;

/** Default install locations, as containerd's. */
export const INSTALL_DEFAULTS = {
  prefix: "/usr/local",
  configDir: dirname(DEFAULT_CONFIG_PATH),
  systemdDir: "/etc/systemd/system",
} as const;

/** Options of {@linkcode install}. */
export interface InstallOptions {
  /** Installation prefix: `<prefix>/bin/tainerd` (default /usr/local). */
  prefix?: string;
  /** Where config.toml goes (default /etc/tainerd). */
  configDir?: string;
  /** Where tainerd.service goes (default /etc/systemd/system). */
  systemdDir?: string;
  /** A staging root every path is written under (default /). */
  root?: string;
  /** The build to install: a compiled binary, a bundle `.js`, its wrapper, or their directory. */
  from?: string;
  /** The Deno binary the bundle wrapper runs (default: the one running this). */
  deno?: string;
}

/** One file the install dealt with. */
export interface InstallStep {
  /** The path on the target system (without the staging root). */
  path: string;
  action: "installed" | "unchanged" | "kept" | "removed" | "absent";
}

/** A build of tainerd to install. */
export interface InstallSource {
  kind: "compiled" | "bundle";
  /** The compiled binary or the bundle's `.js`. */
  path: string;
}

const ELF_MAGIC = [0x7f, 0x45, 0x4c, 0x46];

async function isElf(path: string): Promise<boolean> {
  try {
    using f = await Deno.open(path);
    const head = new Uint8Array(4);
    const n = await f.read(head);
    return n === 4 && ELF_MAGIC.every((b, i) => head[i] === b);
  } catch {
    return false;
  }
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/**
 * The build to install: `from` (a compiled binary, a bundle `.js`, the bundle's wrapper, or a
 * directory holding them, as `dist/`), else the running program when it is a build.
 *
 * @throws {TainerdError} InvalidArgument when there is no build to install
 */
export async function findSource(from?: string): Promise<InstallSource> {
  if (from === undefined) {
    if (Deno.build.standalone) return { kind: "compiled", path: Deno.execPath() };
    if (isBundled() && Deno.mainModule.startsWith("file:")) {
      return { kind: "bundle", path: fileURLToPath(Deno.mainModule) };
    }
    throw invalidArgument(
      "Cannot install from the source tree: build first (deno task bundle, or deno task " +
        "compile), then run dist/tainerd install, or pass --from dist/",
    );
  }
  const path = resolve(from);
  let stat: Deno.FileInfo;
  try {
    stat = await Deno.stat(path);
  } catch {
    throw invalidArgument(`Cannot install from "${from}": no such file or directory`);
  }
  const candidates = stat.isDirectory
    ? [join(path, "tainerd"), join(path, "tainerd.js")]
    : [path, join(dirname(path), "tainerd.js")];
  for (const c of candidates) {
    if (!(await isFile(c))) continue;
    if (await isElf(c)) return { kind: "compiled", path: c };
    if (c.endsWith(".js")) return { kind: "bundle", path: c };
  }
  throw invalidArgument(
    `Cannot install from "${from}": expected a compiled tainerd, a tainerd.js bundle, or a ` +
      "directory holding one (deno task compile, deno task bundle)",
  );
}

/** The shell wrapper installed as `<prefix>/bin/tainerd` for a bundle. */
export function bundleWrapper(bundlePath: string, deno: string): string {
  return `#!/bin/sh
# tainerd, installed by \`tainerd install\`: the bundle ${bundlePath}, run by Deno.
export DENO_NO_UPDATE_CHECK=1
deno=\${TAINERD_DENO:-${shellQuote(deno)}}
[ -x "$deno" ] || deno=deno
exec "$deno" run -A --no-config ${shellQuote(bundlePath)} "$@"
`;
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}

/** The unit for the given paths: contrib/tainerd.service with ExecStart following them. */
export function renderUnit(
  opts: { prefix?: string; configDir?: string } = {},
): string {
  const prefix = opts.prefix ?? INSTALL_DEFAULTS.prefix;
  const configDir = opts.configDir ?? INSTALL_DEFAULTS.configDir;
  let exec = `${prefix}/bin/tainerd daemon`;
  if (configDir !== INSTALL_DEFAULTS.configDir) exec += ` --config ${configDir}/config.toml`;
  return SYSTEMD_UNIT.replace(/^ExecStart=.*$/m, `ExecStart=${exec}`);
}

function checkPath(name: string, value: string): string {
  if (!value.startsWith("/")) {
    throw invalidArgument(`The ${name} must be an absolute path, not "${value}"`);
  }
  // Unit files split ExecStart on whitespace and expand % specifiers.
  if (/[\s%"'\\]/.test(value)) {
    throw invalidArgument(`The ${name} "${value}" must not contain whitespace, quotes, % or \\`);
  }
  return value.replace(/(.)\/+$/, "$1");
}

async function sameContent(path: string, data: Uint8Array): Promise<boolean> {
  try {
    const old = await Deno.readFile(path);
    return old.length === data.length && old.every((b, i) => b === data[i]);
  } catch {
    return false;
  }
}

/** Writes a file atomically (temp file + rename: safe over a running binary). */
async function put(
  path: string,
  data: Uint8Array,
  mode: number,
): Promise<"installed" | "unchanged"> {
  await Deno.mkdir(dirname(path), { recursive: true, mode: 0o755 });
  if (await sameContent(path, data)) {
    await Deno.chmod(path, mode);
    return "unchanged";
  }
  const tmp = `${path}.tmp-${Deno.pid}`;
  try {
    await Deno.writeFile(tmp, data, { mode });
    await Deno.chmod(tmp, mode);
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
  return "installed";
}

/**
 * Installs tainerd (see the module doc); returns what it did to each file, in order.
 *
 * @throws {TainerdError} InvalidArgument for bad paths or no build to install
 */
export async function install(opts: InstallOptions = {}): Promise<InstallStep[]> {
  const prefix = checkPath("prefix", opts.prefix ?? INSTALL_DEFAULTS.prefix);
  const configDir = checkPath("config directory", opts.configDir ?? INSTALL_DEFAULTS.configDir);
  const systemdDir = checkPath("systemd directory", opts.systemdDir ?? INSTALL_DEFAULTS.systemdDir);
  const root = resolve(opts.root ?? "/");
  const staged = (p: string) => join(root, p);
  const source = await findSource(opts.from);
  const encoder = new TextEncoder();
  const steps: InstallStep[] = [];
  const step = (path: string, action: InstallStep["action"]) => steps.push({ path, action });

  const bin = `${prefix}/bin/tainerd`;
  const lib = `${prefix}/lib/tainerd/tainerd.js`;
  const chunkDir = `${prefix}/lib/tainerd/${BUNDLE_CHUNKS_DIR}`;
  // Chunks of an earlier bundle install that this one does not have (or all, for a binary).
  const dropStaleChunks = async (keep: Set<string>) => {
    let names: string[] = [];
    try {
      names = [...Deno.readDirSync(staged(chunkDir))].filter((e) => e.isFile).map((e) => e.name);
    } catch {
      return;
    }
    for (const name of names) {
      if (keep.has(name) || !name.endsWith(".js")) continue;
      await Deno.remove(staged(`${chunkDir}/${name}`));
      step(`${chunkDir}/${name}`, "removed");
    }
    await Deno.remove(staged(chunkDir)).catch(() => {}); // Only if empty.
  };
  const files: ManifestFile[] = [];
  const putTracked = async (path: string, data: Uint8Array, mode: number) => {
    step(path, await put(staged(path), data, mode));
    files.push({ path, sha256: sha256Hex(data) });
  };
  if (source.kind === "compiled") {
    await putTracked(bin, await Deno.readFile(source.path), 0o755);
    // An earlier bundle install's leftovers.
    try {
      await Deno.remove(staged(lib));
      await Deno.remove(dirname(staged(lib))).catch(() => {});
      step(lib, "removed");
    } catch {
      // None.
    }
    await dropStaleChunks(new Set());
    await Deno.remove(dirname(staged(lib))).catch(() => {});
  } else {
    // The chunks first: the entry point loads them.
    const from = join(dirname(source.path), BUNDLE_CHUNKS_DIR);
    const names = new Set<string>();
    try {
      for (const e of Deno.readDirSync(from)) {
        if (e.isFile && e.name.endsWith(".js")) names.add(e.name);
      }
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    if (names.size > 0) await Deno.mkdir(staged(chunkDir), { recursive: true });
    for (const name of [...names].sort()) {
      await putTracked(`${chunkDir}/${name}`, await Deno.readFile(`${from}/${name}`), 0o644);
    }
    await dropStaleChunks(names);
    await putTracked(lib, await Deno.readFile(source.path), 0o755);
    const wrapper = bundleWrapper(lib, opts.deno ?? Deno.execPath());
    await putTracked(bin, encoder.encode(wrapper), 0o755);
  }

  const unit = `${systemdDir}/tainerd.service`;
  await putTracked(unit, encoder.encode(renderUnit({ prefix, configDir })), 0o644);

  const config = `${configDir}/config.toml`;
  if (await isFile(staged(config))) {
    step(config, "kept");
  } else {
    const text = formatDefaultConfig(BUILTINS);
    step(config, await put(staged(config), encoder.encode(text), 0o644));
  }

  const manifest: InstallManifest = {
    version: 1,
    kind: source.kind,
    prefix,
    configDir,
    systemdDir,
    files,
    config,
  };
  const path = manifestPath(prefix);
  step(
    path,
    await put(staged(path), encoder.encode(JSON.stringify(manifest, null, 2) + "\n"), 0o644),
  );
  return steps;
}

/** One file of {@linkcode InstallManifest}: its target path and the SHA-256 it was written with. */
export interface ManifestFile {
  path: string;
  sha256: string;
}

/** What `tainerd install` put in place, as `<prefix>/lib/tainerd/install-manifest.json`. */
export interface InstallManifest {
  version: 1;
  kind: InstallSource["kind"];
  prefix: string;
  configDir: string;
  systemdDir: string;
  /** The files uninstall removes (program, wrapper, unit, shim launcher…). */
  files: ManifestFile[];
  /** The config file (removed only with `--purge-config`). */
  config: string;
}

/** Where install records what it installed under `prefix`. */
export function manifestPath(prefix: string): string {
  return `${prefix}/lib/tainerd/install-manifest.json`;
}

function sha256Hex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

/** Options of {@linkcode uninstall}. */
export interface UninstallOptions {
  /** The prefix tainerd was installed under (default /usr/local). */
  prefix?: string;
  /** Where config.toml is, when there is no manifest (default /etc/tainerd). */
  configDir?: string;
  /** Where tainerd.service is, when there is no manifest (default /etc/systemd/system). */
  systemdDir?: string;
  /** The staging root (default /). */
  root?: string;
  /** Remove the config too (kept by default). */
  purgeConfig?: boolean;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

function parseManifest(text: string, where: string): InstallManifest {
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    throw failedPrecondition(`${where} is not valid JSON; not removing anything`);
  }
  const o = m as Partial<InstallManifest> | null;
  const abs = (p: unknown) => typeof p === "string" && p.startsWith("/") && !p.includes("/../");
  if (
    !o || o.version !== 1 || !abs(o.prefix) || !abs(o.configDir) || !abs(o.systemdDir) ||
    !abs(o.config) || !Array.isArray(o.files) ||
    !o.files.every((f) => abs(f?.path) && typeof f?.sha256 === "string")
  ) {
    throw failedPrecondition(`${where} is not a tainerd install manifest; not removing anything`);
  }
  return o as InstallManifest;
}

/**
 * Removes what `tainerd install` put in place, as its manifest records it: the program (binary,
 * or bundle + wrapper), the unit, any other file it lists, then the manifest; the config only
 * with `purgeConfig`. Data (/var/lib/tainerd, /run/tainerd) is never touched. Idempotent: with
 * nothing installed it does nothing.
 *
 * @throws {TainerdError} FailedPrecondition, removing nothing, when tainerd's files are there
 *   without a manifest, or a listed file changed since install wrote it
 */
export async function uninstall(opts: UninstallOptions = {}): Promise<InstallStep[]> {
  const prefix = checkPath("prefix", opts.prefix ?? INSTALL_DEFAULTS.prefix);
  let configDir = checkPath("config directory", opts.configDir ?? INSTALL_DEFAULTS.configDir);
  let systemdDir = checkPath("systemd directory", opts.systemdDir ?? INSTALL_DEFAULTS.systemdDir);
  const root = resolve(opts.root ?? "/");
  const staged = (p: string) => join(root, p);
  const steps: InstallStep[] = [];
  const mpath = manifestPath(prefix);

  let text: string | undefined;
  try {
    text = await Deno.readTextFile(staged(mpath));
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  let config = `${configDir}/config.toml`;
  if (text === undefined) {
    const ours = [
      `${prefix}/bin/tainerd`,
      `${prefix}/bin/containerd-shim-tainerd-v2`,
      `${prefix}/lib/tainerd/tainerd.js`,
      `${systemdDir}/tainerd.service`,
    ];
    const found = [];
    for (const p of ours) if (await exists(staged(p))) found.push(p);
    if (found.length > 0) {
      throw failedPrecondition(
        `Not removing ${found.join(", ")}: not installed by tainerd install (no ${mpath}); ` +
          "remove them by hand, or run tainerd install again first",
      );
    }
  } else {
    const m = parseManifest(text, mpath);
    if (m.prefix !== prefix) {
      throw failedPrecondition(
        `${mpath} records another prefix (${m.prefix}); not removing anything`,
      );
    }
    configDir = m.configDir;
    systemdDir = m.systemdDir;
    config = m.config;
    // Only tainerd's own file names, under the recorded directories.
    const allowed = new Set([
      `${prefix}/bin/tainerd`,
      `${prefix}/bin/containerd-shim-tainerd-v2`,
      `${prefix}/lib/tainerd/tainerd.js`,
      `${systemdDir}/tainerd.service`,
    ]);
    // …and the bundle's chunks, by name, directly in its chunks directory.
    const chunkPrefix = `${prefix}/lib/tainerd/${BUNDLE_CHUNKS_DIR}/`;
    const isChunk = (p: string) =>
      p.startsWith(chunkPrefix) && /^[\w.-]+\.js$/.test(p.slice(chunkPrefix.length));
    const foreign = m.files.filter((f) => !allowed.has(f.path) && !isChunk(f.path)).map((f) =>
      f.path
    );
    if (foreign.length > 0) {
      throw failedPrecondition(
        `${mpath} lists files tainerd does not install (${foreign.join(", ")}); ` +
          "not removing anything",
      );
    }
    const present: string[] = [];
    const changed: string[] = [];
    for (const f of m.files) {
      let data: Uint8Array;
      try {
        data = await Deno.readFile(staged(f.path));
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) continue;
        throw err;
      }
      if (sha256Hex(data) === f.sha256) present.push(f.path);
      else changed.push(f.path);
    }
    if (changed.length > 0) {
      throw failedPrecondition(
        `Not removing anything: ${changed.join(", ")} changed since tainerd install wrote ` +
          `${changed.length === 1 ? "it" : "them"} (remove by hand, or run tainerd install again)`,
      );
    }
    for (const f of m.files) {
      if (present.includes(f.path)) {
        await Deno.remove(staged(f.path));
        steps.push({ path: f.path, action: "removed" });
      } else {
        steps.push({ path: f.path, action: "absent" });
      }
    }
  }

  if (await exists(staged(config))) {
    if (opts.purgeConfig) {
      await Deno.remove(staged(config));
      steps.push({ path: config, action: "removed" });
      await Deno.remove(staged(configDir)).catch(() => {}); // Only if empty.
    } else {
      steps.push({ path: config, action: "kept" });
    }
  }
  if (text !== undefined) {
    await Deno.remove(staged(`${prefix}/lib/tainerd/${BUNDLE_CHUNKS_DIR}`)).catch(() => {});
    await Deno.remove(staged(mpath));
    steps.push({ path: mpath, action: "removed" });
    await Deno.remove(staged(dirname(mpath))).catch(() => {}); // Only if empty.
  }
  return steps;
}

function onPath(cmd: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir === "") continue;
    try {
      const st = Deno.statSync(`${dir}/${cmd}`);
      if (st.isFile && ((st.mode ?? 0) & 0o111) !== 0) return true;
    } catch {
      // Not here.
    }
  }
  return false;
}

/** The `install` command. */
export function installCommand(): Command {
  return new Command("install")
    .description(
      "install this build, its systemd unit and a default config (starts nothing)",
    )
    .option("--prefix <dir>", "installation prefix (<prefix>/bin/tainerd)", INSTALL_DEFAULTS.prefix)
    .option("--config-dir <dir>", "directory of config.toml", INSTALL_DEFAULTS.configDir)
    .option("--systemd-dir <dir>", "directory of tainerd.service", INSTALL_DEFAULTS.systemdDir)
    .option("--root <dir>", "stage every file under this directory (like DESTDIR)", "/")
    .option("--from <path>", "the build to install (default: this one), e.g. dist/")
    .action(async (o: Required<Omit<InstallOptions, "from" | "deno">> & { from?: string }) => {
      const steps = await install(o);
      const out = (s: string) => Deno.stdout.writeSync(new TextEncoder().encode(s));
      for (const s of steps) out(`${s.action.padEnd(9)} ${s.path}\n`);
      if (!onPath("runc")) {
        out("warning: runc is not on PATH; tainerd needs it to run containers\n");
      }
      if (o.root === "/") {
        out(
          "Nothing was started. To run tainerd under systemd:\n" +
            "  systemctl daemon-reload && systemctl enable --now tainerd\n",
        );
      }
    });
}

/** The `uninstall` command. */
export function uninstallCommand(): Command {
  return new Command("uninstall")
    .description(
      "remove what tainerd install put in place; keeps data and, unless --purge-config, the config",
    )
    .option("--prefix <dir>", "installation prefix", INSTALL_DEFAULTS.prefix)
    .option("--config-dir <dir>", "directory of config.toml", INSTALL_DEFAULTS.configDir)
    .option("--systemd-dir <dir>", "directory of tainerd.service", INSTALL_DEFAULTS.systemdDir)
    .option("--root <dir>", "the staging root the install was made under", "/")
    .option("--purge-config", "remove the config too")
    .action(
      async (o: Required<Omit<UninstallOptions, "purgeConfig">> & { purgeConfig?: boolean }) => {
        const steps = await uninstall(o);
        const out = (s: string) => Deno.stdout.writeSync(new TextEncoder().encode(s));
        if (steps.length === 0) out("Nothing to uninstall.\n");
        for (const s of steps) out(`${s.action.padEnd(9)} ${s.path}\n`);
        if (steps.some((s) => s.action === "removed") && o.root === "/") {
          out(
            "Data in /var/lib/tainerd and /run/tainerd was left alone. Stop tainerd before " +
              "uninstalling it; then: systemctl daemon-reload\n",
          );
        }
      },
    );
}
