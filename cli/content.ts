/**
 * `tainerd content …` and `tainerd leases …`: the content store and leases, with ctr's
 * flags and output.
 *
 * @module
 */

import { Command, Option } from "commander";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { TainerdClient } from "../client/client.ts";
import { readContent, RemoteWriter } from "../client/content.ts";
import { invalidArgument, isAlreadyExists, isNotFound } from "../plugins/errdefs.ts";
import { parseDigest } from "../plugins/content/digest.ts";
import { parseGoDuration } from "../plugins/gc/scheduler.ts";
import { formatTable, parseLabelArgs } from "./table.ts";
import { humanDuration, humanSize } from "./units.ts";

/** Runs `fn` with a client of the daemon the global options name. */
export type WithClient = (fn: (c: TainerdClient) => Promise<void>) => Promise<void>;

const CHUNK = 1 << 20;
const encoder = new TextEncoder();

function out(text: string): void {
  Deno.stdout.writeSync(encoder.encode(text));
}

function warn(text: string): void {
  Deno.stderr.writeSync(encoder.encode(`tainerd: ${text}\n`));
}

async function writeAll(
  w: { write(p: Uint8Array): Promise<number> },
  data: Uint8Array,
): Promise<void> {
  let done = 0;
  while (done < data.byteLength) done += await w.write(data.subarray(done));
}

/** Fills `buf` from stdin as far as it goes; returns the bytes read (0 at the end). */
async function readFull(buf: Uint8Array): Promise<number> {
  let filled = 0;
  while (filled < buf.byteLength) {
    const n = await Deno.stdin.read(buf.subarray(filled));
    if (n === null) break;
    filled += n;
  }
  return filled;
}

function labelsText(labels: Record<string, string>, empty: string): string {
  const pairs = Object.keys(labels).sort().map((k) => `${k}=${labels[k]}`);
  return pairs.length > 0 ? pairs.join(",") : empty;
}

/** Streams stdin into the ingest `ref`, as ctr's `content.WriteBlob`. */
async function ingest(
  c: TainerdClient,
  ref: string,
  total: number,
  expected: string,
): Promise<void> {
  let w: RemoteWriter;
  try {
    w = await RemoteWriter.open(c, ref, { total, expected });
  } catch (err) {
    if (isAlreadyExists(err)) return; // Already present.
    throw err;
  }
  try {
    const buf = new Uint8Array(CHUNK);
    // Resume: skip what the server already has.
    let skip = w.offset;
    while (skip > 0) {
      const n = await readFull(buf.subarray(0, Math.min(skip, CHUNK)));
      if (n === 0) break;
      skip -= n;
    }
    let copied = 0;
    for (;;) {
      const n = await readFull(buf);
      if (n === 0) break;
      await w.write(buf.subarray(0, n));
      copied += n;
    }
    if (total !== 0 && w.offset < total) {
      throw invalidArgument(
        `Failed to read the expected number of bytes: got ${w.offset} of ${total} (${copied} ` +
          `from stdin)`,
      );
    }
    try {
      await w.commit(total, expected);
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
    }
  } finally {
    w.close();
  }
}

/** The `content` command tree. */
export function contentCommand(withClient: WithClient): Command {
  const content = new Command("content").description("manage content");

  content.command("list").alias("ls")
    .description("list all blobs in the store")
    .option("-q, --quiet", "print only the blob digest")
    .argument("[filters...]", "filters, e.g. labels.foo==bar")
    .action((filters: string[], o: { quiet?: boolean }) =>
      withClient(async (c) => {
        const rows = [["DIGEST", "SIZE", "AGE", "LABELS"]];
        for await (const batch of c.content.list({ filters })) {
          for (const info of batch.info) {
            if (o.quiet) {
              out(info.digest + "\n");
              continue;
            }
            const created = info.createdAt ? timestampDate(info.createdAt).getTime() : Date.now();
            rows.push([
              info.digest,
              humanSize(Number(info.size)),
              humanDuration(Date.now() - created),
              labelsText(info.labels, "-"),
            ]);
          }
        }
        if (!o.quiet) out(formatTable(rows));
      })
    );

  content.command("get")
    .description("get the data for an object")
    .argument("<digest>")
    .action((digest: string) =>
      withClient(async (c) => {
        parseDigest(digest);
        for await (const chunk of readContent(c, digest)) await writeAll(Deno.stdout, chunk);
      })
    );

  content.command("ingest")
    .description("accept content into the store from stdin")
    .option("--expected-size <bytes>", "validate against provided size", "0")
    .option("--expected-digest <digest>", "verify content against expected digest", "")
    .argument("<ref>", "the transaction reference")
    .action((ref: string, o: { expectedSize: string; expectedDigest: string }) =>
      withClient(async (c) => {
        const total = Number(o.expectedSize);
        if (!Number.isSafeInteger(total) || total < 0) {
          throw invalidArgument(`Invalid --expected-size ${JSON.stringify(o.expectedSize)}`);
        }
        if (o.expectedDigest !== "") parseDigest(o.expectedDigest);
        await ingest(c, ref, total, o.expectedDigest);
      })
    );

  content.command("delete").alias("del").alias("remove").alias("rm")
    .description("permanently delete one or more blobs; prints the ones deleted")
    .argument("<digests...>")
    .action((digests: string[]) =>
      withClient(async (c) => {
        let failure: unknown;
        for (const digest of digests) {
          try {
            parseDigest(digest);
            await c.content.delete({ digest });
            out(digest + "\n");
          } catch (err) {
            if (isNotFound(err)) continue;
            failure ??= err;
            warn(`could not delete ${digest}: ${(err as Error).message}`);
          }
        }
        if (failure) throw failure;
      })
    );

  content.command("label")
    .description("add labels to content (key= removes a label)")
    .argument("<digest>")
    .argument("[labels...]", "labels as key=value")
    .action((digest: string, args: string[]) =>
      withClient(async (c) => {
        parseDigest(digest);
        const given = parseLabelArgs(args);
        const labels: Record<string, string> = {};
        const paths: string[] = [];
        for (const [k, v] of Object.entries(given)) {
          paths.push(`labels.${k}`);
          if (v !== "") labels[k] = v;
        }
        const info = paths.length === 0
          ? (await c.content.info({ digest })).info
          : (await c.content.update({ info: { digest, labels }, updateMask: { paths } })).info;
        out(labelsText(info?.labels ?? {}, "") + "\n");
      })
    );

  content.command("active")
    .description("display active transfers")
    .argument("[filter]", "a filter on the ingests, e.g. ref~=layer")
    .action((filter: string | undefined) =>
      withClient(async (c) => {
        const { statuses } = await c.content.listStatuses({ filters: filter ? [filter] : [] });
        const rows = [["REF", "SIZE", "AGE"]];
        for (const st of statuses) {
          const started = st.startedAt ? timestampDate(st.startedAt).getTime() : Date.now();
          rows.push([st.ref, humanSize(Number(st.offset)), humanDuration(Date.now() - started)]);
        }
        out(formatTable(rows));
      })
    );

  content.command("abort")
    .description("abort one or more ingests")
    .argument("<refs...>")
    .action((refs: string[]) =>
      withClient(async (c) => {
        for (const ref of refs) {
          await c.content.abort({ ref });
          out(ref + "\n");
        }
      })
    );

  return content;
}

/** The `leases` command tree. */
export function leasesCommand(withClient: WithClient): Command {
  const leases = new Command("leases").description("manage leases");

  leases.command("list").alias("ls")
    .description("list all active leases")
    .option("-q, --quiet", "print only the lease ids")
    .argument("[filters...]", "filters, e.g. id==foo")
    .action((filters: string[], o: { quiet?: boolean }) =>
      withClient(async (c) => {
        const { leases } = await c.leases.list({ filters });
        if (o.quiet) {
          out(leases.map((l) => l.id + "\n").join(""));
          return;
        }
        const rows = [["ID", "CREATED AT", "LABELS"]];
        for (const l of leases) {
          const created = l.createdAt ? timestampDate(l.createdAt) : new Date(0);
          rows.push([
            l.id,
            created.toISOString().replace(/\.\d+Z$/, "Z"),
            labelsText(l.labels, "-"),
          ]);
        }
        out(formatTable(rows));
      })
    );

  leases.command("create")
    .description("create a lease; prints its id")
    .option("--id <id>", "the id of the lease (generated by default)")
    .addOption(
      new Option("-x, --expires <duration>", "expiration of the lease (0 never expires)")
        .default("24h"),
    )
    .argument("[labels...]", "labels as key=value")
    .action((args: string[], o: { id?: string; expires: string }) =>
      withClient(async (c) => {
        const labels = parseLabelArgs(args);
        const expires = parseGoDuration(o.expires);
        if (expires > 0) {
          labels["containerd.io/gc.expire"] = new Date(Date.now() + expires).toISOString()
            .replace(/\.\d+Z$/, "Z");
        }
        const { lease } = await c.leases.create({ id: o.id ?? "", labels });
        out(`${lease?.id ?? ""}\n`);
      })
    );

  leases.command("delete").alias("del").alias("remove").alias("rm")
    .description("delete leases; prints the ones deleted")
    .option("--sync", "remove unreferenced resources before returning")
    .argument("<ids...>")
    .action((ids: string[], o: { sync?: boolean }) =>
      withClient(async (c) => {
        for (const [i, id] of ids.entries()) {
          await c.leases.delete({ id, sync: !!o.sync && i === ids.length - 1 });
          out(id + "\n");
        }
      })
    );

  return leases;
}
