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

/**
 * `daemon` with only its own flags, parsed without the CLI: `tainerd daemon` loads the daemon's
 * modules and not the CLI's (commander, the client, every command), which is ~15 ms of every
 * daemon (re)start. Null when the CLI should parse (help, an unknown or malformed flag), so that
 * it answers as it always does.
 */
export function daemonFastPath(args: readonly string[]): Record<string, string> | null {
  if (args[0] !== "daemon") return null;
  const names: Record<string, string> = {
    "-c": "config",
    "--config": "config",
    "--address": "address",
    "--root": "root",
    "--state": "state",
    "-l": "logLevel",
    "--log-level": "logLevel",
  };
  const flags: Record<string, string> = {};
  for (let i = 1; i < args.length; i++) {
    const a = args[i];
    const eq = a.startsWith("--") ? a.indexOf("=") : -1;
    const name = names[eq > 0 ? a.slice(0, eq) : a];
    if (name === undefined) return null;
    let value: string | undefined;
    if (eq > 0) value = a.slice(eq + 1);
    else value = args[++i];
    if (value === undefined || value.startsWith("-")) return null;
    flags[name] = value;
  }
  return flags;
}

/** Runs the program: the shim when invoked as one, else the daemon or the command line. */
export async function run(args: string[]): Promise<void> {
  const shim = shimArgs(args);
  if (shim !== null) {
    await (await import("./shim/main.ts")).runShim(shim);
    return;
  }
  const daemonFlags = daemonFastPath(args);
  if (daemonFlags === null) {
    await main(args);
    return;
  }
  try {
    const { runDaemon } = await import("./daemon/daemon.ts");
    const { DEFAULT_CONFIG_PATH } = await import("./config/config.ts");
    await runDaemon(daemonFlags, DEFAULT_CONFIG_PATH);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    Deno.stderr.writeSync(new TextEncoder().encode(`tainerd: ${message}\n`));
    Deno.exit(1);
  }
}

if (import.meta.main) await run(Deno.args);
