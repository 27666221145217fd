/**
 * tainerd's entry point: one program that is the daemon, the client CLI and (later) the shim.
 *
 * @module
 */

import { shimArgs } from "./shim/dispatch.ts";

/** Runs the command line; errors print one clear line and exit non-zero. */
export async function main(args: string[]): Promise<void> {
  try {
    // Loaded here, not at the top: a shim never evaluates the CLI's (and daemon's) modules.
    const { buildCli } = await import("./cli/cli.ts");
    await buildCli().parseAsync(args, { from: "user" });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    Deno.stderr.writeSync(new TextEncoder().encode(`tainerd: ${message}\n`));
    Deno.exit(1);
  }
}

/** Runs the program: the shim when invoked as one, else the command line. */
export async function run(args: string[]): Promise<void> {
  const shim = shimArgs(args);
  if (shim !== null) await (await import("./shim/main.ts")).runShim(shim);
  else await main(args);
}

if (import.meta.main) await run(Deno.args);
