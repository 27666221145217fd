/**
 * Platform specifiers and matchers, as containerd's `platforms` package: parsing
 * (`linux/arm64/v8`, `amd64`, `linux`), normalisation (`x86_64` → `amd64`, `aarch64` →
 * `arm64`), and matchers that pick manifests out of an index, in order of preference.
 *
 * ```ts
 * import { onlyPlatform, parsePlatform } from "./images/platforms.ts";
 * const m = onlyPlatform(parsePlatform("linux/arm64"));
 * m.match({ os: "linux", architecture: "arm", variant: "v7" }); // true: arm64 runs arm/v7
 * ```
 *
 * @module
 */

import { invalidArgument } from "../plugins/errdefs.ts";
import { formatPlatform, hostPlatform, type Platform } from "../plugins/platforms.ts";

export { formatPlatform, hostPlatform, type Platform };

const COMPONENT_RE = /^[A-Za-z0-9_-]+$/;
const KNOWN_OS = new Set([
  "aix",
  "android",
  "darwin",
  "dragonfly",
  "freebsd",
  "hurd",
  "illumos",
  "ios",
  "js",
  "linux",
  "nacl",
  "netbsd",
  "openbsd",
  "plan9",
  "solaris",
  "windows",
  "zos",
]);
const KNOWN_ARCH = new Set([
  "386",
  "amd64",
  "amd64p32",
  "arm",
  "armbe",
  "arm64",
  "arm64be",
  "ppc64",
  "ppc64le",
  "loong64",
  "mips",
  "mipsle",
  "mips64",
  "mips64le",
  "mips64p32",
  "mips64p32le",
  "ppc",
  "riscv",
  "riscv64",
  "s390",
  "s390x",
  "sparc",
  "sparc64",
  "wasm",
]);

function normalizeOs(os: string): string {
  if (!os) return hostPlatform().os;
  const lower = os.toLowerCase();
  return lower === "macos" ? "darwin" : lower;
}

function normalizeArch(arch: string, variant: string): [string, string] {
  let a = arch.toLowerCase();
  let v = variant.toLowerCase();
  switch (a) {
    case "i386":
      a = "386";
      v = "";
      break;
    case "x86_64":
    case "x86-64":
    case "amd64":
      a = "amd64";
      if (v === "v1") v = "";
      break;
    case "aarch64":
    case "arm64":
      a = "arm64";
      if (v === "8" || v === "v8") v = "";
      break;
    case "armhf":
      a = "arm";
      v = "v7";
      break;
    case "armel":
      a = "arm";
      v = "v6";
      break;
    case "arm":
      if (v === "" || v === "7") v = "v7";
      else if (v === "5" || v === "6" || v === "8") v = `v${v}`;
      break;
  }
  return [a, v];
}

/** A platform in canonical form, for comparison (`aarch64` → `arm64`, `arm` → `arm/v7`). */
export function normalizePlatform(p: Platform): Platform {
  const [architecture, variant] = normalizeArch(p.architecture ?? "", p.variant ?? "");
  const out: Platform = { os: normalizeOs(p.os ?? ""), architecture };
  if (variant) out.variant = variant;
  return out;
}

/**
 * Parses a platform specifier as containerd: `os/arch[/variant]`, or one component naming an
 * OS (the host's architecture is added) or an architecture (the host's OS is added).
 *
 * @throws {TainerdError} InvalidArgument for a malformed or unknown specifier.
 */
export function parsePlatform(specifier: string): Platform {
  if (specifier.includes("*")) {
    throw invalidArgument(`Invalid platform "${specifier}": wildcards are not supported`);
  }
  const parts = specifier.split("/");
  for (const part of parts) {
    if (!COMPONENT_RE.test(part)) {
      throw invalidArgument(
        `Invalid platform "${specifier}": "${part}" is not a valid component (letters, digits, "_" and "-")`,
      );
    }
  }
  const host = hostPlatform();
  const make = (os: string, architecture: string, variant: string): Platform =>
    variant ? { os, architecture, variant } : { os, architecture };
  switch (parts.length) {
    case 1: {
      const os = normalizeOs(parts[0]);
      if (KNOWN_OS.has(os)) return make(os, host.architecture, "");
      let [arch, variant] = normalizeArch(parts[0], "");
      if (arch === "arm" && variant === "v7") variant = "";
      if (KNOWN_ARCH.has(arch)) return make(host.os, arch, variant);
      throw invalidArgument(
        `Invalid platform "${specifier}": unknown operating system or architecture`,
      );
    }
    case 2: {
      let [arch, variant] = normalizeArch(parts[1], "");
      if (arch === "arm" && variant === "v7") variant = "";
      return make(normalizeOs(parts[0]), arch, variant);
    }
    case 3: {
      let [arch, variant] = normalizeArch(parts[1], parts[2]);
      if (arch === "arm64" && variant === "") variant = "v8";
      return make(normalizeOs(parts[0]), arch, variant);
    }
  }
  throw invalidArgument(`Invalid platform "${specifier}": expected os/arch[/variant]`);
}

/** Picks platforms and ranks them (lower is preferred), as containerd's `MatchComparer`. */
export interface PlatformMatcher {
  /** Whether `p` is acceptable. */
  match(p: Platform): boolean;
  /** Whether `a` is preferred over `b`. */
  less(a: Platform, b: Platform): boolean;
  /** A description for error messages. */
  readonly description: string;
}

function samePlatform(a: Platform, b: Platform): boolean {
  return a.os === b.os && a.architecture === b.architecture && (a.variant ?? "") ===
      (b.variant ?? "");
}

/** Accepts exactly the given platforms (after normalisation), preferring earlier ones. */
export function orderedPlatforms(...platforms: Platform[]): PlatformMatcher {
  const wanted = platforms.map(normalizePlatform);
  const rank = (p: Platform): number => {
    const n = normalizePlatform(p);
    const i = wanted.findIndex((w) => samePlatform(w, n));
    return i < 0 ? Number.MAX_SAFE_INTEGER : i;
  };
  return {
    match: (p) => rank(p) !== Number.MAX_SAFE_INTEGER,
    less: (a, b) => rank(a) < rank(b),
    description: platforms.map(formatPlatform).join(", "),
  };
}

function platformVector(p: Platform): Platform[] {
  const vector = [p];
  const v = p.variant ?? "";
  if (p.architecture === "amd64") {
    const n = Number(v.replace(/^v/, ""));
    if (Number.isInteger(n) && n > 1) {
      for (let i = n - 1; i >= 1; i--) {
        vector.push({ os: p.os, architecture: "amd64", ...(i > 1 ? { variant: `v${i}` } : {}) });
      }
    }
    vector.push({ os: p.os, architecture: "386" });
  } else if (p.architecture === "arm") {
    const n = Number(v.replace(/^v/, ""));
    if (Number.isInteger(n) && n > 5) {
      for (let i = n - 1; i >= 5; i--) {
        vector.push({ os: p.os, architecture: "arm", variant: `v${i}` });
      }
    }
  } else if (p.architecture === "arm64") {
    vector.push(...platformVector({ os: p.os, architecture: "arm", variant: v || "v8" }));
  }
  return vector;
}

/**
 * Accepts `p` and the platforms that run on it (arm64 runs arm/v8…v5, amd64 runs 386), as
 * containerd's `platforms.Only`.
 */
export function onlyPlatform(p: Platform): PlatformMatcher {
  const m = orderedPlatforms(...platformVector(normalizePlatform(p)));
  return { ...m, description: formatPlatform(p) };
}

/** Accepts exactly `p`, as containerd's `platforms.OnlyStrict`. */
export function onlyStrictPlatform(p: Platform): PlatformMatcher {
  return orderedPlatforms(p);
}

/** Accepts any of `platforms` (and what runs on each), preferring earlier ones. */
export function anyPlatform(...platforms: Platform[]): PlatformMatcher {
  const matchers = platforms.map(onlyPlatform);
  const rank = (p: Platform): number => {
    const i = matchers.findIndex((m) => m.match(p));
    return i < 0 ? Number.MAX_SAFE_INTEGER : i;
  };
  return {
    match: (p) => matchers.some((m) => m.match(p)),
    less: (a, b) => rank(a) < rank(b),
    description: platforms.map(formatPlatform).join(", "),
  };
}

/** Accepts every platform. */
export const allPlatforms: PlatformMatcher = {
  match: () => true,
  less: (a, b) => formatPlatform(a) < formatPlatform(b),
  description: "all platforms",
};

/** The host's platform and what runs on it, as containerd's `platforms.Default()`. */
export function defaultPlatformMatcher(): PlatformMatcher {
  return onlyPlatform(hostPlatform());
}

/**
 * The matcher for user options: every platform, the given ones (strings are parsed), or the
 * host's.
 */
export function platformMatcherFor(
  opts: { platform?: string | Platform | (string | Platform)[]; allPlatforms?: boolean },
): PlatformMatcher {
  if (opts.allPlatforms) return allPlatforms;
  const given = opts.platform === undefined
    ? []
    : Array.isArray(opts.platform)
    ? opts.platform
    : [opts.platform];
  const parsed = given.map((p) => typeof p === "string" ? parsePlatform(p) : p);
  if (parsed.length === 0) return defaultPlatformMatcher();
  return parsed.length === 1 ? onlyPlatform(parsed[0]) : anyPlatform(...parsed);
}
