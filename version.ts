/**
 * tainerd's version, source revision and build stamp.
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };

/** The release version, from deno.json. */
export const VERSION: string = denoJson.version;

/** The package name reported by `version`. */
export const PACKAGE = "github.com/tainerd/tainerd";

/** The directory beside a bundle's `tainerd.js` holding the chunks it loads (scripts/build.ts). */
export const BUNDLE_CHUNKS_DIR = "chunks";

/** What a build (`scripts/build.ts`) stamps into the program before it runs. */
export interface BuildStamp {
  /** The git revision the build was made from ("" when unknown). */
  revision: string;
  /**
   * Whether the program is a build's JavaScript (a bundle, compiled or not) rather than the
   * source tree: it then re-executes itself without any deno.json.
   */
  bundled: boolean;
}

let stamp: BuildStamp | undefined;
let revision: string | undefined;

/** Records the build stamp; called by the generated entry point of a build. */
export function stampBuild(s: BuildStamp): void {
  stamp = { ...s };
  revision = undefined;
}

/** Whether this program runs as a build's single JavaScript file (see {@linkcode BuildStamp}). */
export function isBundled(): boolean {
  return stamp?.bundled ?? false;
}

/**
 * The source revision: `TAINERD_REVISION` from the environment, else the revision stamped by
 * the build, else the git commit of the source tree this module runs from, else "unknown".
 */
export function revisionOf(): string {
  if (revision !== undefined) return revision;
  revision = Deno.env.get("TAINERD_REVISION") || stamp?.revision || "";
  if (revision === "" && stamp === undefined && import.meta.url.startsWith("file:")) {
    try {
      const dir = new URL(".", import.meta.url).pathname;
      const out = new Deno.Command("git", {
        args: ["-C", dir, "rev-parse", "--short=12", "HEAD"],
        stdout: "piped",
        stderr: "null",
      }).outputSync();
      if (out.success) revision = new TextDecoder().decode(out.stdout).trim();
    } catch {
      // No git: fall through.
    }
  }
  if (revision === "") revision = "unknown";
  return revision;
}
