/**
 * `tainerd snapshots …`: the Snapshots service from the command line, with ctr's subcommands,
 * flags and output (`ls`, `info`, `tree`, `prepare`, `view`, `mounts`, `commit`, `rm`,
 * `usage`, `label`), `--snapshotter` on the group or on each subcommand.
 *
 * @module
 */

import { Command } from "commander";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import {
  type Info,
  Kind,
  Snapshots,
} from "../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import type { TainerdClient } from "../client/client.ts";
import { bytesSize, tabwrite } from "./images_progress.ts";
import { parseLabelArgs } from "./table.ts";

/** Runs `fn` with a client of the daemon the global options name. */
export type WithClient = (fn: (c: TainerdClient) => Promise<void>) => Promise<void>;

const encoder = new TextEncoder();

function out(text: string): void {
  const bytes = encoder.encode(text);
  for (let off = 0; off < bytes.length;) off += Deno.stdout.writeSync(bytes.subarray(off));
}

/** The kind as containerd's `snapshots.Kind.String()`. */
export function kindName(kind: Kind): string {
  switch (kind) {
    case Kind.VIEW:
      return "View";
    case Kind.ACTIVE:
      return "Active";
    case Kind.COMMITTED:
      return "Committed";
    default:
      return "Unknown";
  }
}

/** Go's `time.Time` JSON form (RFC 3339 with nanoseconds, trailing zeros trimmed). */
function goTime(ts: Timestamp | undefined): string | undefined {
  if (!ts) return undefined;
  const iso = timestampDate(ts).toISOString().replace(/\.\d+Z$/, "");
  const frac = ts.nanos ? `.${String(ts.nanos).padStart(9, "0").replace(/0+$/, "")}` : "";
  return `${iso}${frac}Z`;
}

/** A snapshot's info as ctr prints it (`commands.PrintAsJSON(snapshots.Info)`). */
export function infoJson(info: Info): string {
  const o: Record<string, unknown> = { Kind: kindName(info.kind), Name: info.name };
  if (info.parent) o.Parent = info.parent;
  if (Object.keys(info.labels).length) o.Labels = info.labels;
  o.Created = goTime(info.createdAt) ?? "0001-01-01T00:00:00Z";
  o.Updated = goTime(info.updatedAt) ?? "0001-01-01T00:00:00Z";
  return JSON.stringify(o, null, 4) + "\n";
}

/** ctr's `printMounts`: one `mount -t …` line per mount. */
export function mountLines(
  target: string,
  mounts: readonly { type: string; source: string; options: string[] }[],
): string {
  return mounts.map((m) => `mount -t ${m.type} ${m.source} ${target} -o ${m.options.join(",")}\n`)
    .join("");
}

/** Mounts as ctr's `--mounts` prints them (`PrintAsJSON([]mount.Mount)`). */
function mountsJson(
  mounts: readonly { type: string; source: string; options: string[] }[],
): string {
  return JSON.stringify(
    mounts.map((m) => ({ Type: m.type, Source: m.source, Options: m.options })),
    null,
    4,
  ) + "\n";
}

/** The tree ctr's `snapshots tree` prints: roots in listing order, children indented. */
export function formatTree(infos: readonly Pick<Info, "name" | "parent">[]): string {
  const nodes: { name: string; parent: string; children: string[] }[] = [];
  const index = new Map<string, { name: string; parent: string; children: string[] }>();
  const add = (name: string, parent: string) => {
    let node = index.get(name);
    if (!node) {
      node = { name, parent, children: [] };
      nodes.push(node);
      index.set(name, node);
    } else {
      node.parent = parent;
    }
    if (parent) {
      const p = index.get(parent) ?? add(parent, "");
      p.children.push(name);
    }
    return node;
  };
  for (const i of infos) add(i.name, i.parent);
  let text = "";
  const print = (name: string, level: number) => {
    let prefix = "  ".repeat(level);
    if (level > 0) prefix += "\\_";
    text += `${prefix} ${name}\n`;
    for (const child of index.get(name)!.children) print(child, level + 1);
  };
  for (const n of nodes) if (!n.parent) print(n.name, 0);
  return text;
}

async function listAll(c: TainerdClient, snapshotter: string): Promise<Info[]> {
  const infos: Info[] = [];
  for await (const r of c.service(Snapshots).list({ snapshotter, filters: [] })) {
    infos.push(...r.info);
  }
  return infos;
}

interface SnapshotterOpt {
  snapshotter?: string;
}

/** `tainerd snapshots …`. */
export function snapshotsCommand(withClient: WithClient): Command {
  const group = new Command("snapshots").alias("snapshot")
    .description("manage snapshots")
    .option(
      "--snapshotter <name>",
      "snapshotter name (default: the namespace's, else overlayfs; env CONTAINERD_SNAPSHOTTER)",
    );
  /** The snapshotter named on the subcommand, the group, or in the environment. */
  const snapshotterOf = (o: SnapshotterOpt) =>
    o.snapshotter ?? group.opts<SnapshotterOpt>().snapshotter ??
      Deno.env.get("CONTAINERD_SNAPSHOTTER") ?? "";
  const sub = (name: string) =>
    group.command(name).option("--snapshotter <name>", "snapshotter name");

  sub("ls").alias("list")
    .description("list snapshots")
    .action((o: SnapshotterOpt) =>
      withClient(async (c) => {
        const rows = [["KEY", "PARENT", "KIND"]];
        for (const i of await listAll(c, snapshotterOf(o))) {
          rows.push([i.name, i.parent, kindName(i.kind)]);
        }
        out(tabwrite(rows));
      })
    );

  sub("info")
    .description("get info about a snapshot")
    .argument("<key>")
    .action((key: string, o: SnapshotterOpt) =>
      withClient(async (c) => {
        const { info } = await c.service(Snapshots).stat({ snapshotter: snapshotterOf(o), key });
        out(infoJson(info!));
      })
    );

  sub("tree")
    .description("display tree view of snapshot branches")
    .action((o: SnapshotterOpt) =>
      withClient(async (c) => {
        out(formatTree(await listAll(c, snapshotterOf(o))));
      })
    );

  for (const kind of ["prepare", "view"] as const) {
    sub(kind)
      .description(
        kind === "prepare"
          ? "prepare a snapshot from a committed snapshot"
          : "create a read-only snapshot from a committed snapshot",
      )
      .argument("<key>")
      .argument("[parent]")
      .option("-t, --target <path>", "mount target path, will print mount, if provided")
      .option("--mounts", "print out snapshot mounts as JSON")
      .action((
        key: string,
        parent: string | undefined,
        o: SnapshotterOpt & { target?: string; mounts?: boolean },
      ) =>
        withClient(async (c) => {
          const req = { snapshotter: snapshotterOf(o), key, parent: parent ?? "" };
          const { mounts } = kind === "prepare"
            ? await c.service(Snapshots).prepare({
              ...req,
              labels: { "containerd.io/gc.root": new Date().toISOString().replace(/\.\d+Z$/, "Z") },
            })
            : await c.service(Snapshots).view({ ...req, labels: {} });
          if (o.target) out(mountLines(o.target, mounts));
          if (o.mounts) out(mountsJson(mounts));
        })
      );
  }

  sub("mounts").alias("m").alias("mount")
    .description("print the mount commands of a snapshot")
    .argument("<target>")
    .argument("<key>")
    .action((target: string, key: string, o: SnapshotterOpt) =>
      withClient(async (c) => {
        const { mounts } = await c.service(Snapshots).mounts({
          snapshotter: snapshotterOf(o),
          key,
        });
        out(mountLines(target, mounts));
      })
    );

  sub("commit")
    .description("commit an active snapshot into the provided name")
    .argument("<key>", "the name of the committed snapshot")
    .argument("<active>", "the active snapshot's key")
    .action((name: string, active: string, o: SnapshotterOpt) =>
      withClient(async (c) => {
        await c.service(Snapshots).commit({
          snapshotter: snapshotterOf(o),
          name,
          key: active,
          labels: { "containerd.io/gc.root": new Date().toISOString().replace(/\.\d+Z$/, "Z") },
        });
      })
    );

  sub("rm").alias("delete").alias("del").alias("remove")
    .description("remove snapshots")
    .argument("<keys...>")
    .action((keys: string[], o: SnapshotterOpt) =>
      withClient(async (c) => {
        for (const key of keys) {
          try {
            await c.service(Snapshots).remove({ snapshotter: snapshotterOf(o), key });
          } catch (err) {
            throw new Error(`failed to remove ${JSON.stringify(key)}: ${(err as Error).message}`, {
              cause: err,
            });
          }
        }
      })
    );

  sub("usage")
    .description("usage of snapshots")
    .argument("[keys...]")
    .option("-b", "display size in bytes")
    .action((keys: string[], o: SnapshotterOpt & { b?: boolean }) =>
      withClient(async (c) => {
        const snapshotter = snapshotterOf(o);
        const api = c.service(Snapshots);
        const names = keys.length ? keys : (await listAll(c, snapshotter)).map((i) => i.name);
        const rows = [["KEY", "SIZE", "INODES"]];
        for (const key of names) {
          const u = await api.usage({ snapshotter, key });
          const size = Number(u.size);
          rows.push([key, o.b ? String(size) : bytesSize(size), String(u.inodes)]);
        }
        out(tabwrite(rows));
      })
    );

  sub("label")
    .description("add labels to a snapshot (key= clears one); prints its labels")
    .argument("<name>")
    .argument("[labels...]", "labels as key=value")
    .action((name: string, args: string[], o: SnapshotterOpt) =>
      withClient(async (c) => {
        const snapshotter = snapshotterOf(o);
        const api = c.service(Snapshots);
        const parsed = parseLabelArgs(args);
        const paths = Object.keys(parsed).map((k) => `labels.${k}`);
        const set = Object.fromEntries(Object.entries(parsed).filter(([, v]) => v !== ""));
        const info = paths.length
          ? (await api.update({
            snapshotter,
            info: { name, labels: set },
            updateMask: { paths },
          })).info
          : (await api.stat({ snapshotter, key: name })).info;
        const labels = info?.labels ?? {};
        out(Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`).join(",") + "\n");
      })
    );

  return group;
}
