/**
 * The command tree: `tainerd daemon`, `tainerd config default`, and the client commands built
 * on `mod.ts`'s client (`version`, `plugins ls`, `namespaces …`).
 *
 * @module
 */

import { Command, Option } from "commander";
import { TainerdClient } from "../client/client.ts";
import { DEFAULT_ADDRESS, DEFAULT_CONFIG_PATH, formatDefaultConfig } from "../config/config.ts";
import { runDaemon } from "../daemon/daemon.ts";
import { BUILTINS } from "../plugins/builtins.ts";
import { formatPlatform } from "../plugins/platforms.ts";
import { revisionOf, VERSION } from "../version.ts";
import { formatLabels, formatTable, parseLabelArgs } from "./table.ts";
import { contentCommand, leasesCommand } from "./content.ts";
import { imagesCommand, pullCommand } from "./images.ts";
import { runCommand } from "./run.ts";
import { containersCommand, tasksCommand } from "./run_tasks.ts";
import { eventsCommand } from "./events.ts";
import { installCommand, uninstallCommand } from "./install.ts";
import { snapshotsCommand } from "./snapshots.ts";

/** Global client options. */
interface GlobalOptions {
  address: string;
  namespace: string;
  timeout?: string;
}

function env(...names: string[]): string | undefined {
  for (const n of names) {
    const v = Deno.env.get(n);
    if (v) return v;
  }
  return undefined;
}

function write(text: string): void {
  Deno.stdout.writeSync(new TextEncoder().encode(text));
}

/** Builds the command tree. `withClient` opens a client from the global options. */
export function buildCli(): Command {
  const program = new Command("tainerd")
    .description("containerd, rebuilt in TypeScript on Deno: daemon, client and shim")
    .version(VERSION, "-v, --version", "print the client version")
    .addOption(
      new Option("-a, --address <path>", "address of the daemon's socket")
        .default(env("TAINERD_ADDRESS", "CONTAINERD_ADDRESS") ?? DEFAULT_ADDRESS),
    )
    .addOption(
      new Option("-n, --namespace <name>", "namespace to work in")
        .default(env("TAINERD_NAMESPACE", "CONTAINERD_NAMESPACE") ?? "default"),
    )
    .option("--timeout <seconds>", "timeout of each API call")
    .enablePositionalOptions()
    .showHelpAfterError()
    .configureOutput({ writeErr: (s) => Deno.stderr.writeSync(new TextEncoder().encode(s)) });

  const client = (): TainerdClient => {
    const o = program.opts<GlobalOptions>();
    return new TainerdClient({
      address: o.address,
      namespace: o.namespace,
      timeoutMs: o.timeout ? Number(o.timeout) * 1000 : undefined,
    });
  };
  const withClient = async (fn: (c: TainerdClient) => Promise<void>) => {
    const c = client();
    try {
      await fn(c);
    } finally {
      c.close();
    }
  };

  program.command("daemon")
    .description("run the daemon in the foreground")
    .option("-c, --config <path>", "config file", undefined)
    .option("--address <path>", "address of the API socket")
    .option("--root <dir>", "root directory for persistent data")
    .option("--state <dir>", "state directory for runtime data")
    .option("-l, --log-level <level>", "log level (trace, debug, info, warn, error)")
    .action(
      async (
        o: { config?: string; address?: string; root?: string; state?: string; logLevel?: string },
      ) => {
        await runDaemon(o, DEFAULT_CONFIG_PATH);
      },
    );

  const config = program.command("config").description("daemon configuration");
  config.command("default")
    .description("print the default config, every builtin plugin's section included")
    .action(() => write(formatDefaultConfig(BUILTINS)));

  program.command("version")
    .description("print the client and server versions")
    .action(() =>
      withClient(async (c) => {
        write(
          `Client:\n  Version:  ${VERSION}\n  Revision: ${revisionOf()}\n  Deno:     ${Deno.version.deno}\n\n`,
        );
        const v = await c.version.version({});
        write(
          `Server:\n  Version:  ${v.version}\n  Revision: ${v.revision}\n  UUID: ${
            (await c.introspection.server({})).uuid
          }\n`,
        );
      })
    );

  const plugins = program.command("plugins").alias("plugin").description("daemon plugins");
  plugins.command("ls").alias("list")
    .description("list the daemon's plugins and their status")
    .option("-d, --detailed", "show requires, exports, capabilities and errors")
    .argument("[filters...]", "filters, e.g. type==io.containerd.grpc.v1")
    .action((filters: string[], o: { detailed?: boolean }) =>
      withClient(async (c) => {
        const { plugins } = await c.introspection.plugins({ filters });
        if (o.detailed) {
          for (const p of plugins) {
            write(`Type:          ${p.type}\nID:            ${p.id}\n`);
            if (p.requires.length) write(`Requires:      ${p.requires.join(", ")}\n`);
            if (p.platforms.length) {
              write(`Platforms:     ${p.platforms.map((x) => formatPlatform(x)).join(",")}\n`);
            }
            for (const [k, v] of Object.entries(p.exports)) write(`Exports:       ${k}=${v}\n`);
            if (p.capabilities.length) write(`Capabilities:  ${p.capabilities.join(",")}\n`);
            if (p.initErr) write(`Error:         ${p.initErr.message}\n`);
            write("\n");
          }
          return;
        }
        const rows = [["TYPE", "ID", "PLATFORMS", "STATUS"]];
        for (const p of plugins) {
          const status = p.initErr
            ? (p.initErr.message.includes("skip plugin") ? "skip" : "error")
            : "ok";
          const platforms = p.platforms.length
            ? p.platforms.map((x) => formatPlatform(x)).join(",")
            : "-";
          rows.push([p.type, p.id, platforms, status]);
        }
        write(formatTable(rows));
      })
    );

  const ns = program.command("namespaces").alias("namespace").alias("ns")
    .description("manage namespaces");
  ns.command("create").alias("c")
    .description("create a namespace")
    .argument("<name>")
    .argument("[labels...]", "labels as key=value")
    .action((name: string, labels: string[]) =>
      withClient(async (c) => {
        await c.namespaces.create({ namespace: { name, labels: parseLabelArgs(labels) } });
      })
    );
  ns.command("ls").alias("list")
    .description("list namespaces")
    .option("-q, --quiet", "print only the names")
    .action((o: { quiet?: boolean }) =>
      withClient(async (c) => {
        const { namespaces } = await c.namespaces.list({});
        if (o.quiet) {
          write(namespaces.map((n) => n.name + "\n").join(""));
          return;
        }
        write(
          formatTable([
            ["NAME", "LABELS"],
            ...namespaces.map((n) => [n.name, formatLabels(n.labels)]),
          ]),
        );
      })
    );
  ns.command("label")
    .description("set and clear labels of a namespace (key= clears)")
    .argument("<name>")
    .argument("[labels...]", "labels as key=value")
    .action((name: string, labels: string[]) =>
      withClient(async (c) => {
        const parsed = parseLabelArgs(labels);
        await c.namespaces.update({
          namespace: { name, labels: parsed },
          updateMask: { paths: Object.keys(parsed).map((k) => `labels.${k}`) },
        });
      })
    );
  ns.command("rm").alias("remove").alias("delete")
    .description("remove one or more empty namespaces")
    .argument("<names...>")
    .action((names: string[]) =>
      withClient(async (c) => {
        let failed = 0;
        for (const name of names) {
          try {
            await c.namespaces.delete({ name });
            write(name + "\n");
          } catch (err) {
            failed++;
            Deno.stderr.writeSync(new TextEncoder().encode(`tainerd: ${(err as Error).message}\n`));
          }
        }
        if (failed) Deno.exitCode = 1;
      })
    );
  program.addCommand(contentCommand(withClient));
  program.addCommand(leasesCommand(withClient));
  program.addCommand(installCommand());
  program.addCommand(uninstallCommand());
  program.addCommand(imagesCommand(withClient));
  program.addCommand(pullCommand(withClient)); // `tainerd pull`: short for `tainerd images pull`
  program.addCommand(snapshotsCommand(withClient));
  program.addCommand(runCommand(withClient));
  program.addCommand(containersCommand(withClient));
  program.addCommand(tasksCommand(withClient));
  program.addCommand(eventsCommand(withClient));
  return program;
}
