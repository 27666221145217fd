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
 * - bundle: `<prefix>/lib/tainerd/tainerd.js` and a `<prefix>/bin/tainerd` shell wrapper that
 *   runs it with the Deno that ran the install (else `deno` on PATH);
 * - `<systemd-dir>/tainerd.service` (contrib/tainerd.service, ExecStart following the paths);
 * - `<config-dir>/config.toml` (`tainerd config default`) unless one exists.
 *
 * `--root` stages everything under another directory (like DESTDIR); the paths written into
 * the files stay those of the target system.
 *
 * @module
 */

import { Command } from "commander";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import UNIT from "../contrib/tainerd.service" with { type: "text" };
import { DEFAULT_CONFIG_PATH, formatDefaultConfig } from "../config/config.ts";
import { invalidArgument } from "../plugins/errdefs.ts";
import { BUILTINS } from "../plugins/builtins.ts";
import { isBundled } from "../version.ts";

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
  action: "installed" | "unchanged" | "kept" | "removed";
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
  if (source.kind === "compiled") {
    step(bin, await put(staged(bin), await Deno.readFile(source.path), 0o755));
    // An earlier bundle install's leftovers.
    try {
      await Deno.remove(staged(lib));
      await Deno.remove(dirname(staged(lib))).catch(() => {});
      step(lib, "removed");
    } catch {
      // None.
    }
  } else {
    step(lib, await put(staged(lib), await Deno.readFile(source.path), 0o755));
    const wrapper = bundleWrapper(lib, opts.deno ?? Deno.execPath());
    step(bin, await put(staged(bin), encoder.encode(wrapper), 0o755));
  }

  const unit = `${systemdDir}/tainerd.service`;
  step(unit, await put(staged(unit), encoder.encode(renderUnit({ prefix, configDir })), 0o644));

  const config = `${configDir}/config.toml`;
  if (await isFile(staged(config))) {
    step(config, "kept");
  } else {
    const text = formatDefaultConfig(BUILTINS);
    step(config, await put(staged(config), encoder.encode(text), 0o644));
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
