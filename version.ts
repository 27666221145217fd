/**
 * tainerd's version and source revision.
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };

/** The release version, from deno.json. */
export const VERSION: string = denoJson.version;

/** The package name reported by `version`. */
export const PACKAGE = "github.com/tainerd/tainerd";

let revision: string | undefined;

/**
 * The source revision: `TAINERD_REVISION` stamped at build time, else the git commit of the
 * source tree this module runs from, else "unknown".
 */
export function revisionOf(): string {
  if (revision !== undefined) return revision;
  revision = Deno.env.get("TAINERD_REVISION") ?? "";
  if (revision === "" && import.meta.url.startsWith("file:")) {
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
