/**
 * `tainerd images …`: pull, push, list, remove, tag, import, export and check images, with
 * ctr's flags and output, over the client library (`images/`, `client/images.ts`).
 *
 * @module
 */

import { Command, Option } from "commander";
import type { TainerdClient } from "../client/client.ts";
import {
  deleteImage,
  imagePlatforms,
  type ImageRecord,
  imageSize,
  listImages,
  missingContent,
  tagImage,
} from "../client/images.ts";
import { exportArchive } from "../images/archive/exporter.ts";
import { importArchive } from "../images/archive/importer.ts";
import {
  formatPlatform,
  hostPlatform,
  onlyPlatform,
  parsePlatform,
  type Platform,
  platformMatcherFor,
} from "../images/platforms.ts";
import { pull } from "../images/pull.ts";
import { push } from "../images/push.ts";
import type { RegistryOptions } from "../images/registry_options.ts";
import { DEFAULT_SNAPSHOTTER, unpack } from "../images/unpack.ts";
import { isNotFound } from "../plugins/errdefs.ts";
import { addImageMountCommands } from "./images_mount.ts";
import { ProgressDisplay, tabwrite } from "./images_progress.ts";
import { parseLabelArgs } from "./table.ts";
import { bytesSize } from "./images_progress.ts";

/** Runs `fn` with a client of the daemon the global options name. */
export type WithClient = (fn: (c: TainerdClient) => Promise<void>) => Promise<void>;

const encoder = new TextEncoder();

function out(text: string): void {
  const bytes = encoder.encode(text);
  for (let off = 0; off < bytes.length;) off += Deno.stdout.writeSync(bytes.subarray(off));
}

function warn(text: string): void {
  Deno.stderr.writeSync(encoder.encode(`tainerd: ${text}\n`));
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

interface RegistryFlags {
  plainHttp?: boolean;
  skipVerify?: boolean;
  user?: string;
  hostsDir?: string;
}

function registryFlags(cmd: Command): Command {
  return cmd
    .option("--plain-http", "allow connections using plain HTTP")
    .option("--skip-verify", "skip SSL certificate validation")
    .option("-u, --user <user:password>", "user[:password] registry credentials")
    .option("--hosts-dir <dir>", "custom hosts configuration directory (hosts.toml per registry)");
}

function registryOptions(o: RegistryFlags): RegistryOptions {
  return { plainHttp: o.plainHttp, skipVerify: o.skipVerify, user: o.user, hostsDir: o.hostsDir };
}

/** A duration as Go's `time.Duration.String` prints it: `21.260506ms`, `1.5s`. */
export function goDuration(ms: number): string {
  const trim = (s: string) => s.includes(".") ? s.replace(/\.?0+$/, "") : s;
  if (ms < 1) return `${trim((ms * 1000).toFixed(3))}µs`;
  if (ms < 1000) return `${trim(ms.toFixed(6))}ms`;
  const s = ms / 1000;
  if (s < 60) return `${trim(s.toFixed(9))}s`;
  const m = Math.floor(s / 60);
  return `${m}m${trim((s - m * 60).toFixed(9))}s`;
}

/**
 * The pull command, one definition shared by `tainerd images pull` and its short form
 * `tainerd pull`.
 */
export function pullCommand(withClient: WithClient): Command {
  return registryFlags(
    new Command("pull")
      .description("pull an image from a registry and unpack it for use (as ctr images pull)")
      .argument("<ref>", "image reference")
      .option("--platform <platform>", "pull content for a platform (repeatable)", collect)
      .option("--all-platforms", "pull content and metadata for every platform")
      .addOption(
        new Option("--snapshotter <name>", "snapshotter to unpack into").default(
          Deno.env.get("CONTAINERD_SNAPSHOTTER") ?? DEFAULT_SNAPSHOTTER,
        ),
      )
      .option("--no-unpack", "only fetch the content, do not unpack it")
      .option("--print-chainid", "print the resulting image's chain ID")
      .option("--max-concurrent-downloads <n>", "blobs downloaded at once", "3")
      .option("--label <k=v>", "label of the image (repeatable)", collect),
  ).action((
    ref: string,
    o: RegistryFlags & {
      platform?: string[];
      allPlatforms?: boolean;
      snapshotter: string;
      unpack: boolean;
      printChainid?: boolean;
      maxConcurrentDownloads: string;
      label?: string[];
    },
  ) =>
    withClient(async (c) => {
      // Pull and unpack in one: layers are applied (in order) while later ones download.
      const progress = new ProgressDisplay();
      let unpackStart: number | undefined;
      let result;
      try {
        result = await pull(c, ref, {
          ...registryOptions(o),
          platform: o.platform,
          allPlatforms: o.allPlatforms,
          concurrency: Number(o.maxConcurrentDownloads) || 3,
          labels: o.label ? parseLabelArgs(o.label) : undefined,
          unpack: o.unpack ? { snapshotter: o.snapshotter } : false,
          onProgress: (e) => {
            if (e.status === "unpacking") unpackStart ??= performance.now();
            progress.handler(e);
          },
        });
      } catch (err) {
        progress.stop();
        throw err;
      }
      progress.finish();
      if (!o.unpack) return;
      const platforms: Platform[] = o.platform && !o.allPlatforms
        ? o.platform.map(parsePlatform)
        : [hostPlatform()];
      for (const [i, p] of platforms.entries()) {
        out(`unpacking ${formatPlatform(p)} ${result.image.target.digest}...\n`);
        const r = result.unpacked[i];
        if (o.printChainid && r) out(`image chain ID: ${r.chainId}\n`);
      }
      out(`done: ${goDuration(performance.now() - (unpackStart ?? performance.now()))}\t\n`);
    })
  );
}

/** `tainerd images …`. */
export function imagesCommand(withClient: WithClient): Command {
  const images = new Command("images").alias("image").alias("i")
    .description("manage images");

  images.addCommand(pullCommand(withClient));

  registryFlags(
    images.command("push")
      .description("push an image to a registry")
      .argument("<remote>", "where to push (a reference with a tag)")
      .argument("[local]", "the local image (default: the remote reference)")
      .option("--platform <platform>", "push only this platform's content (repeatable)", collect)
      .option("--max-concurrent-uploaded-layers <n>", "blobs uploaded at once", "3"),
  ).action((
    remote: string,
    local: string | undefined,
    o: RegistryFlags & {
      platform?: string[];
      maxConcurrentUploadedLayers: string;
    },
  ) =>
    withClient(async (c) => {
      const progress = new ProgressDisplay();
      try {
        await push(c, remote, local, {
          ...registryOptions(o),
          platform: o.platform,
          concurrency: Number(o.maxConcurrentUploadedLayers) || 3,
          onProgress: progress.handler,
        });
      } catch (err) {
        progress.stop();
        throw err;
      }
      progress.finish();
    })
  );

  images.command("ls").alias("list")
    .description("list images")
    .argument("[filters...]", "filters, e.g. name==ref")
    .option("-q, --quiet", "print only the image refs")
    .addOption(
      new Option("--format <format>", "output format").choices(["table", "json"]).default(
        "table",
      ),
    )
    .action((filters: string[], o: { quiet?: boolean; format: string }) =>
      withClient(async (c) => {
        const list = await listImages(c, filters);
        if (o.quiet) {
          out(list.map((i) => i.name + "\n").join(""));
          return;
        }
        if (o.format === "json") {
          const records = [];
          for (const img of list) records.push(await imageJson(c, img));
          out(JSON.stringify(records, null, 2) + "\n");
          return;
        }
        const rows = [["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]];
        for (const img of list) rows.push(await imageRow(c, img));
        out(tabwrite(rows));
      })
    );

  images.command("rm").alias("remove").alias("delete").alias("del")
    .description("remove one or more images by reference")
    .argument("<refs...>")
    .option("--sync", "remove the image and collect its content before returning")
    .action((refs: string[], o: { sync?: boolean }) =>
      withClient(async (c) => {
        let failed = 0;
        for (const [i, ref] of refs.entries()) {
          try {
            await deleteImage(c, ref, { sync: o.sync === true && i === refs.length - 1 });
            out(ref + "\n");
          } catch (err) {
            if (isNotFound(err)) {
              warn(`${ref}: image not found`);
              continue;
            }
            failed++;
            warn(`Cannot remove ${ref}: ${(err as Error).message}`);
          }
        }
        if (failed) Deno.exitCode = 1;
      })
    );

  images.command("tag")
    .description("give an image more names")
    .argument("<source>")
    .argument("<targets...>")
    .option("--force", "replace an existing image with the same name")
    .action((source: string, targets: string[], o: { force?: boolean }) =>
      withClient(async (c) => {
        for (const t of targets) {
          await tagImage(c, source, t, { force: o.force });
          out(t + "\n");
        }
      })
    );

  images.command("import")
    .description("import images from a tar archive (OCI layout or docker save)")
    .argument("<file>", "the archive, or - for stdin")
    .option("--base-name <name>", "base image name for tag-only references")
    .option("--index-name <name>", "name the archive's whole index as this image")
    .option("--all-platforms", "import content for every platform")
    .option("--platform <platform>", "import content for this platform")
    .addOption(
      new Option("--snapshotter <name>", "snapshotter to unpack into").default(
        Deno.env.get("CONTAINERD_SNAPSHOTTER") ?? DEFAULT_SNAPSHOTTER,
      ),
    )
    .option("--no-unpack", "do not unpack the imported images")
    .action((file: string, o: {
      baseName?: string;
      indexName?: string;
      allPlatforms?: boolean;
      platform?: string;
      snapshotter: string;
      unpack: boolean;
    }) =>
      withClient(async (c) => {
        const input = file === "-" ? Deno.stdin.readable : (await Deno.open(file)).readable;
        const result = await importArchive(c, input, {
          baseName: o.baseName,
          indexName: o.indexName,
          allPlatforms: o.allPlatforms,
          platform: o.platform,
        });
        if (!o.unpack) return;
        const platform = o.platform ? parsePlatform(o.platform) : hostPlatform();
        for (const img of result.images) {
          out(`unpacking ${img.name} (${img.target.digest})...`);
          await unpack(c, img, {
            snapshotter: o.snapshotter,
            matcher: o.platform ? platformMatcherFor({ platform }) : onlyPlatform(platform),
          });
          out("done\n");
        }
      })
    );

  images.command("export")
    .description("export images as an OCI layout tarball (with a docker manifest.json)")
    .argument("<out>", "the archive to write, or - for stdout")
    .argument("<refs...>", "images to export")
    .option("--platform <platform>", "export content for this platform (repeatable)", collect)
    .option("--all-platforms", "export content for every platform")
    .option("--skip-manifest-json", "leave out the docker manifest.json")
    .action((file: string, refs: string[], o: {
      platform?: string[];
      allPlatforms?: boolean;
      skipManifestJson?: boolean;
    }) =>
      withClient(async (c) => {
        const tmp = file === "-" ? undefined : `${file}.tainerd-${Date.now()}.tmp`;
        const sink = tmp
          ? (await Deno.open(tmp, { write: true, create: true, truncate: true })).writable
          : Deno.stdout.writable;
        try {
          await exportArchive(c, refs, sink, {
            platform: o.platform,
            allPlatforms: o.allPlatforms,
            skipManifestJson: o.skipManifestJson,
          });
          if (tmp) await Deno.rename(tmp, file);
        } catch (err) {
          if (tmp) await Deno.remove(tmp).catch(() => {});
          throw err;
        }
      })
    );

  images.command("check")
    .description("check that images have all their content for the host platform")
    .argument("[filters...]")
    .option("-q, --quiet", "print only the complete images")
    .action((filters: string[], o: { quiet?: boolean }) =>
      withClient(async (c) => {
        const rows = [["REF", "TYPE", "DIGEST", "STATUS", "SIZE"]];
        for (const img of await listImages(c, filters)) {
          let status: string;
          let missing = 0;
          try {
            missing = (await missingContent(c, img)).length;
            status = missing === 0 ? "complete" : `incomplete (${missing} missing)`;
          } catch (err) {
            status = isNotFound(err) ? "incomplete" : `error: ${(err as Error).message}`;
          }
          if (o.quiet) {
            if (status === "complete") out(img.name + "\n");
            continue;
          }
          let size = "-";
          try {
            size = bytesSize(await imageSize(c, img));
          } catch { /* shown as - */ }
          rows.push([img.name, img.target.mediaType, img.target.digest, status, size]);
        }
        if (!o.quiet) out(tabwrite(rows));
      })
    );

  addImageMountCommands(images, withClient);
  return images;
}

/** An image as `images ls --format json` prints it. */
export interface ImageJson {
  name: string;
  target: { mediaType: string; digest: string; size: number };
  labels: Record<string, string>;
  /** The platforms the image has content for, `os/arch[/variant]`, sorted. */
  platforms: string[];
  /** Bytes of the host platform's content; null when it cannot be computed. */
  size: number | null;
  createdAt: string | null;
  updatedAt: string | null;
}

async function imageJson(c: TainerdClient, img: ImageRecord): Promise<ImageJson> {
  let size: number | null = null;
  try {
    size = await imageSize(c, img);
  } catch (err) {
    warn(`Cannot compute the size of ${img.name}: ${(err as Error).message}`);
  }
  let platforms: string[] = [];
  try {
    platforms = [...new Set((await imagePlatforms(c, img)).map(formatPlatform))].sort();
  } catch (err) {
    warn(`Cannot resolve the platforms of ${img.name}: ${(err as Error).message}`);
  }
  return {
    name: img.name,
    target: { mediaType: img.target.mediaType, digest: img.target.digest, size: img.target.size },
    labels: img.labels,
    platforms,
    size,
    createdAt: img.createdAt?.toISOString() ?? null,
    updatedAt: img.updatedAt?.toISOString() ?? null,
  };
}

async function imageRow(c: TainerdClient, img: ImageRecord): Promise<string[]> {
  let size = "-";
  try {
    size = bytesSize(await imageSize(c, img));
  } catch (err) {
    warn(`Cannot compute the size of ${img.name}: ${(err as Error).message}`);
  }
  let platforms = "-";
  try {
    const list = [...new Set((await imagePlatforms(c, img)).map(formatPlatform))].sort();
    if (list.length) platforms = list.join(",");
  } catch (err) {
    warn(`Cannot resolve the platforms of ${img.name}: ${(err as Error).message}`);
  }
  const labels = Object.keys(img.labels).sort().map((k) => `${k}=${img.labels[k]}`).join(",") ||
    "-";
  return [img.name, img.target.mediaType, img.target.digest, size, platforms, labels];
}
