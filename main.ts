/**
 * tainerd's entry point: one program that is the daemon, the client CLI and (later) the shim.
 *
 * @module
 */

import { buildCli } from "./cli/cli.ts";
import { shimArgs } from "./shim/dispatch.ts";

/** Runs the command line; errors print one clear line and exit non-zero. */
export async function main(args: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(args, { from: "user" });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    Deno.stderr.writeSync(new TextEncoder().encode(`tainerd: ${message}\n`));
    Deno.exit(1);
  }
}

if (import.meta.main) {
  const shim = shimArgs(Deno.args);
  if (shim !== null) await (await import("./shim/main.ts")).runShim(shim);
  else await main(Deno.args);
}
