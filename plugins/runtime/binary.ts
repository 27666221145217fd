/**
 * Which shim runs a runtime, as containerd's `runtime/v2/shim.BinaryName`: a runtime named
 * `io.containerd.<name>.<version>` is served by `containerd-shim-<name>-<version>` on PATH, an
 * absolute path is the shim binary itself, and the runtime config's `shims` table maps a
 * runtime name to a binary (a name on PATH or an absolute path). Unlike containerd, the runc
 * runtimes (`io.containerd.runc.v2`, ctr's default, and `io.containerd.runc.v1`) are served by
 * tainerd's own shim unless the `shims` table names another binary for them.
 *
 * @module
 */

import { invalidArgument, notFound } from "../errdefs.ts";

/** The runtimes tainerd's own shim serves by default. */
export const OWN_SHIM_RUNTIMES: readonly string[] = [
  "io.containerd.runc.v2",
  "io.containerd.runc.v1",
];

/** The config of `[plugins."io.containerd.runtime.v2.task"]`. */
export interface RuntimeConfig {
  /** Runtime name → shim binary (a name looked up on PATH, or an absolute path). */
  shims: Record<string, string>;
  /**
   * Which containers without a group annotation share one of tainerd's own shims: "" (the
   * default, as containerd) gives each its own shim; "namespace" puts them all in one shim
   * per namespace (one process instead of one per container).
   */
  shim_group: "" | "namespace";
  /**
   * How long a shared shim stays up once it serves no container (a Go duration): the next
   * container then starts without a shim start. "0s" (the default): it exits at once.
   */
  shim_idle_timeout: string;
}

/** The default runtime config: every runc runtime uses tainerd's own shim. */
export function defaultRuntimeConfig(): RuntimeConfig {
  return { shims: {}, shim_group: "namespace", shim_idle_timeout: "30s" };
}

/**
 * Validates a `[plugins."io.containerd.runtime.v2.task"]` section.
 *
 * @throws {TainerdError} InvalidArgument for an unknown key or a value that is not a string
 */
export function parseRuntimeConfig(
  raw: Record<string, unknown>,
  defaults: unknown,
  where: string,
): RuntimeConfig {
  const d = defaults as RuntimeConfig;
  const out: RuntimeConfig = {
    shims: { ...d.shims },
    shim_group: d.shim_group,
    shim_idle_timeout: d.shim_idle_timeout,
  };
  for (const [key, value] of Object.entries(raw)) {
    if (key === "shim_group") {
      if (value !== "" && value !== "namespace") {
        throw invalidArgument(`Config key ${where}.shim_group must be "" or "namespace"`);
      }
      out.shim_group = value;
      continue;
    }
    if (key === "shim_idle_timeout") {
      if (typeof value !== "string" || !/^\d+(\.\d+)?(ns|us|µs|ms|s|m|h)$/.test(value)) {
        throw invalidArgument(
          `Config key ${where}.shim_idle_timeout must be a duration like "30s"`,
        );
      }
      out.shim_idle_timeout = value;
      continue;
    }
    if (key !== "shims") throw invalidArgument(`Unknown config key ${where}.${key}`);
    if (value === null || typeof value !== "object" || Array.isArray(value)) {
      throw invalidArgument(`Config key ${where}.shims must be a table of runtime = binary`);
    }
    for (const [runtime, binary] of Object.entries(value as Record<string, unknown>)) {
      if (typeof binary !== "string" || binary === "") {
        throw invalidArgument(
          `Config key ${where}.shims."${runtime}" must be a shim binary name or path`,
        );
      }
      out.shims[runtime] = binary;
    }
  }
  return out;
}

/** containerd's `BinaryName`: `a.b.name.version` → `containerd-shim-name-version`, or "". */
export function shimBinaryName(runtime: string): string {
  const parts = runtime.split(".");
  if (parts.length < 2) return "";
  return `containerd-shim-${parts[parts.length - 2]}-${parts[parts.length - 1]}`;
}

/** Go's `exec.LookPath`: the first executable `name` in `$PATH`, or null. */
export function lookPath(name: string, path = Deno.env.get("PATH") ?? ""): string | null {
  if (name.includes("/")) return isExecutable(name) ? name : null;
  for (const dir of path.split(":")) {
    const candidate = `${dir === "" ? "." : dir.replace(/\/+$/, "")}/${name}`;
    if (isExecutable(candidate)) return candidate;
  }
  return null;
}

function isExecutable(path: string): boolean {
  try {
    const info = Deno.statSync(path);
    return info.isFile && ((info.mode ?? 0) & 0o111) !== 0;
  } catch {
    return false;
  }
}

/**
 * The external shim binary of a runtime (an absolute path), or null when tainerd's own shim
 * serves it.
 *
 * @throws {TainerdError} NotFound when the runtime's shim binary does not exist;
 * InvalidArgument for a runtime name containerd could not map to a binary
 */
export function resolveShimBinary(runtime: string, config: RuntimeConfig): string | null {
  const configured = config.shims[runtime];
  let name: string;
  if (configured !== undefined) {
    name = configured;
  } else if (runtime.startsWith("/")) {
    name = runtime;
  } else if (OWN_SHIM_RUNTIMES.includes(runtime)) {
    return null;
  } else {
    name = shimBinaryName(runtime);
    if (name === "" || name.includes("/")) {
      throw invalidArgument(
        `Runtime "${runtime}" is not a valid runtime name (io.containerd.<name>.<version>)`,
      );
    }
  }
  const found = lookPath(name);
  if (found === null) {
    throw notFound(
      `Cannot run runtime "${runtime}": shim binary "${name}" is not ` +
        (name.includes("/") ? "an executable file" : "an executable file on PATH"),
    );
  }
  if (found.startsWith("/")) return found;
  return `${Deno.cwd()}/${found}`;
}
