/**
 * Image import from a tar stream over the API, as containerd's `images/archive` importer and
 * `client.Import`: an OCI image layout (`oci-layout`, `index.json`, `blobs/…`) or a
 * `docker save` archive (`manifest.json`, `<id>.json`, `<id>/layer.tar`). Every file is
 * written to the content store under a temporary lease; a Docker archive gets a schema 2
 * manifest per image and an OCI index naming them; then the images the index names are
 * created (or updated), the walked content labelled with its children, and — if asked —
 * unpacked.
 *
 * @module
 */

import type { TainerdClient } from "../../client/client.ts";
import { readContent } from "../../client/content.ts";
import {
  contentInfo,
  contentProvider,
  setContentLabels,
  withLease,
  writeBlob,
} from "../../client/images_content.ts";
import { type ImageRecord, putImage } from "../../client/images.ts";
import { readTar, TarType } from "../../archive/tar/mod.ts";
import { digestOf, isDigest } from "../../plugins/content/digest.ts";
import { invalidArgument, isKind, notFound } from "../../plugins/errdefs.ts";
import {
  ANNOTATION_IMAGE_NAME,
  ANNOTATION_REF_NAME,
  childGcLabels,
  childrenOf,
  configPlatform,
  type Descriptor,
  filterChildren,
  hasChildren,
  type Index,
  Labels,
  MEDIA_TYPE_DOCKER_LAYER,
  MEDIA_TYPE_DOCKER_LAYER_ZSTD,
  parseConfig,
  parseIndex,
} from "../image.ts";
import {
  allPlatforms,
  defaultPlatformMatcher,
  type Platform,
  platformMatcherFor,
} from "../platforms.ts";
import { parseReference } from "../reference/reference.ts";
import {
  MEDIA_TYPE_DOCKER_CONFIG,
  MEDIA_TYPE_DOCKER_LAYER_GZIP,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_OCI_INDEX,
} from "../remote/media_types.ts";
import type { ProgressHandler } from "../registry_options.ts";
import { unpack, type UnpackResult } from "../unpack.ts";
import { descriptorJson } from "./json.ts";

/** The OCI image layout version this importer reads. */
export const OCI_LAYOUT_VERSION = "1.0.0";
const JSON_LIMIT = 20 << 20;

/** Options of {@link importArchive}. */
export interface ImportOptions {
  /** Also name the archive's whole index as this image. */
  indexName?: string;
  /**
   * How bare OCI ref names (a tag alone) become image names, as ctr's `--base-name`: given, only
   * names under this repository are kept and tags get it as prefix; by default tags get the
   * prefix `import-<yyyy-mm-dd>`.
   */
  baseName?: string;
  /** Import (label and keep) every platform; by default the host's (or `platform`). */
  allPlatforms?: boolean;
  /** The platform to import. */
  platform?: string | Platform;
  /** Unpack the imported images for the platform. */
  unpack?: boolean;
  snapshotter?: string;
  onProgress?: ProgressHandler;
  signal?: AbortSignal;
}

/** What {@link importArchive} did. */
export interface ImportResult {
  /** The images created or updated. */
  images: ImageRecord[];
  /** The archive's index (`index.json`, or the one built for a Docker archive). */
  index: Descriptor;
  unpacked: UnpackResult[];
}

interface DockerManifestEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

function cleanPath(name: string): string {
  const parts: string[] = [];
  for (const p of name.split("/")) {
    if (p === "" || p === ".") continue;
    if (p === "..") parts.pop();
    else parts.push(p);
  }
  return parts.join("/");
}

/**
 * The archive path of a tar entry, refusing absolute names and `..` components (an archive
 * naming files outside its root is hostile, whatever it means to do).
 */
function safePath(name: string): string {
  if (name.startsWith("/") || name.split("/").includes("..")) {
    throw invalidArgument(`Cannot import: the archive names an unsafe path "${name}"`);
  }
  return cleanPath(name);
}

/** A symlink's target inside the archive; `..` may climb, but never out of the root. */
function joinPath(name: string, dir: string, rel: string): string {
  let depth = 0;
  for (const p of (rel.startsWith("/") ? rel : `${dir}/${rel}`).split("/")) {
    if (p === "" || p === ".") continue;
    depth += p === ".." ? -1 : 1;
    if (depth < 0) {
      throw invalidArgument(
        `Cannot import: the symlink "${name}" points outside the archive ("${rel}")`,
      );
    }
  }
  return cleanPath(rel.startsWith("/") ? rel : `${dir}/${rel}`);
}

function dirname(p: string): string {
  const i = p.lastIndexOf("/");
  return i < 0 ? "" : p.slice(0, i);
}

async function readJson<T>(body: ReadableStream<Uint8Array>, what: string): Promise<T> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const c of body) {
    size += c.byteLength;
    if (size > JSON_LIMIT) {
      throw invalidArgument(`Cannot import: ${what} is over ${JSON_LIMIT} bytes`);
    }
    chunks.push(c.slice());
  }
  const all = new Uint8Array(size);
  let o = 0;
  for (const c of chunks) {
    all.set(c, o);
    o += c.byteLength;
  }
  try {
    return JSON.parse(new TextDecoder().decode(all)) as T;
  } catch (err) {
    throw invalidArgument(`Cannot import: ${what} is not valid JSON: ${(err as Error).message}`);
  }
}

/** The tag (or digest) part of a name, as containerd's `ociReferenceName`. */
export function ociReferenceName(name: string): string {
  try {
    return parseReference(name).object || name;
  } catch {
    return name;
  }
}

function refTranslator(base: string, checkPrefix: boolean): (ref: string) => string {
  return (ref) => {
    if (!base) return "";
    if (/[/:@]/.test(ref)) {
      if (checkPrefix && !isImagePrefix(ref, base)) return "";
      return ref;
    }
    return `${base}:${ref}`;
  };
}

function isImagePrefix(ref: string, base: string): boolean {
  if (!ref.startsWith(base)) return false;
  if (ref.length === base.length) return true;
  const c = ref[base.length];
  return c === "/" || c === ":" || c === "@";
}

function imageName(
  annotations: Record<string, string> | undefined,
  translate: (r: string) => string,
) {
  const name = annotations?.[ANNOTATION_IMAGE_NAME];
  if (name) return name;
  const ref = annotations?.[ANNOTATION_REF_NAME];
  return ref ? translate(ref) : "";
}

async function detectLayerMediaType(client: TainerdClient, desc: Descriptor): Promise<string> {
  const head = new Uint8Array(4);
  let n = 0;
  for await (const chunk of readContent(client, desc.digest, { size: 4 })) {
    head.set(chunk.subarray(0, 4 - n), n);
    n += Math.min(chunk.byteLength, 4 - n);
    if (n >= 4) break;
  }
  if (n >= 2 && head[0] === 0x1f && head[1] === 0x8b) return MEDIA_TYPE_DOCKER_LAYER_GZIP;
  if (n >= 4 && head[0] === 0x28 && head[1] === 0xb5 && head[2] === 0x2f && head[3] === 0xfd) {
    return MEDIA_TYPE_DOCKER_LAYER_ZSTD;
  }
  return MEDIA_TYPE_DOCKER_LAYER;
}

/** A compressed blob the store already has for an uncompressed layer, as containerd reuses. */
async function compressedFor(
  client: TainerdClient,
  diffId: string,
): Promise<Descriptor | undefined> {
  const filter = `labels."${Labels.Uncompressed}"==${diffId}`;
  try {
    for await (const resp of client.content.list({ filters: [filter] })) {
      for (const info of resp.info) {
        if (info.digest === diffId) continue;
        return { mediaType: "", digest: info.digest, size: Number(info.size) };
      }
    }
  } catch {
    // Filters unsupported: import the layer as it is.
  }
  return undefined;
}

async function writeManifest(client: TainerdClient, value: unknown, mediaType: string) {
  const bytes = new TextEncoder().encode(JSON.stringify(value));
  const digest = digestOf(bytes);
  await writeBlob(client, `manifest-${digest}`, bytes, {
    expected: { digest, size: bytes.byteLength },
  });
  return { mediaType, digest, size: bytes.byteLength } as Descriptor;
}

/**
 * Reads the archive into the content store and returns the descriptor of its index, as
 * containerd's `archive.ImportIndex`. The client should carry a lease.
 */
export async function importIndex(
  client: TainerdClient,
  source: ReadableStream<Uint8Array>,
  opts: { onProgress?: ProgressHandler; signal?: AbortSignal } = {},
): Promise<Descriptor> {
  let layoutVersion: string | undefined;
  let dockerManifests: DockerManifestEntry[] | undefined;
  const symlinks = new Map<string, string>();
  const blobs = new Map<string, { digest: string; size: number }>();

  for await (const { header, body } of readTar(source)) {
    opts.signal?.throwIfAborted();
    const name = safePath(header.name);
    if (header.type === TarType.Symlink) {
      symlinks.set(name, joinPath(name, dirname(name), header.linkname));
      continue;
    }
    if (header.type !== TarType.Regular && header.type !== TarType.Contiguous) continue;
    if (name === "oci-layout") {
      const layout = await readJson<{ imageLayoutVersion?: string }>(body, "oci-layout");
      layoutVersion = layout.imageLayoutVersion ?? "";
      continue;
    }
    if (name === "manifest.json") {
      dockerManifests = await readJson<DockerManifestEntry[]>(body, "manifest.json");
      if (!Array.isArray(dockerManifests)) {
        throw invalidArgument("Cannot import: manifest.json is not a list");
      }
      continue;
    }
    // A blob of an OCI layout names its digest: skip it when the store has it.
    const m = /^blobs\/([a-z0-9]+)\/([a-f0-9]+)$/.exec(name);
    const named = m && isDigest(`${m[1]}:${m[2]}`) ? `${m[1]}:${m[2]}` : undefined;
    const ref = `tar-${name}`;
    opts.onProgress?.({ ref, status: "downloading", offset: 0, total: header.size });
    let result;
    try {
      result = await writeBlob(client, ref, body, {
        expected: named ? { digest: named, size: header.size } : undefined,
        signal: opts.signal,
      });
    } catch (err) {
      if (!named || !isKind(err, "FailedPrecondition")) throw err;
      throw invalidArgument(
        `Cannot import: the blob "${name}" does not match its digest: ${(err as Error).message}`,
        { cause: err },
      );
    }
    opts.onProgress?.({
      ref,
      status: result.existed ? "exists" : "done",
      offset: header.size,
      total: header.size,
    });
    blobs.set(name, { digest: result.digest, size: header.size });
  }

  if (layoutVersion !== undefined) {
    if (layoutVersion !== OCI_LAYOUT_VERSION) {
      throw invalidArgument(`Cannot import: unsupported OCI layout version "${layoutVersion}"`);
    }
    const idx = blobs.get("index.json");
    if (!idx) throw invalidArgument("Cannot import: the OCI layout has no index.json");
    return { mediaType: MEDIA_TYPE_OCI_INDEX, digest: idx.digest, size: idx.size };
  }
  if (!dockerManifests) {
    throw invalidArgument(
      "Cannot import: unrecognized image format (neither an OCI layout nor a docker save archive)",
    );
  }
  for (const [name, target] of symlinks) {
    const desc = blobs.get(target);
    if (!desc) {
      throw invalidArgument(`Cannot import: no target for the symlink "${name}" → "${target}"`);
    }
    blobs.set(name, desc);
  }

  const provider = contentProvider(client);
  const manifests: Descriptor[] = [];
  for (const entry of dockerManifests) {
    const cfg = blobs.get(cleanPath(entry.Config ?? ""));
    if (!cfg) throw notFound(`Cannot import: image config "${entry.Config}" is not in the archive`);
    const config: Descriptor = { mediaType: MEDIA_TYPE_DOCKER_CONFIG, ...cfg };
    const layers: Descriptor[] = [];
    for (const file of entry.Layers ?? []) {
      const blob = blobs.get(cleanPath(file));
      if (!blob) throw notFound(`Cannot import: layer "${file}" is not in the archive`);
      const compressed = await compressedFor(client, blob.digest);
      const desc: Descriptor = compressed ?? { mediaType: "", ...blob };
      desc.mediaType = await detectLayerMediaType(client, desc);
      layers.push(desc);
    }
    const manifest = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_DOCKER_MANIFEST,
      config: descriptorJson(config),
      layers: layers.map(descriptorJson),
    };
    const desc = await writeManifest(client, manifest, MEDIA_TYPE_DOCKER_MANIFEST);
    const configFile = parseConfig(await provider.readBlob(config), config);
    if (configFile.os || configFile.architecture) desc.platform = configPlatform(configFile);
    const tags = entry.RepoTags ?? [];
    if (tags.length === 0) manifests.push(desc);
    for (const tag of tags) {
      const normalized = parseReference(tag).toString();
      manifests.push({
        ...desc,
        annotations: {
          [ANNOTATION_IMAGE_NAME]: normalized,
          [ANNOTATION_REF_NAME]: ociReferenceName(normalized),
        },
      });
    }
  }
  return await writeManifest(
    client,
    { schemaVersion: 2, manifests: manifests.map(descriptorJson) },
    MEDIA_TYPE_OCI_INDEX,
  );
}

/**
 * Imports an image archive (OCI layout or `docker save`) from `source`, as `ctr images
 * import`: the images it names are created or updated, and unpacked when asked.
 *
 * @throws {TainerdError} InvalidArgument for an unrecognised or malformed archive; NotFound
 *   when it lacks content its manifests name.
 */
export async function importArchive(
  client: TainerdClient,
  source: ReadableStream<Uint8Array>,
  opts: ImportOptions = {},
): Promise<ImportResult> {
  const translate = opts.baseName
    ? refTranslator(opts.baseName, true)
    : refTranslator(`import-${new Date().toISOString().slice(0, 10)}`, false);
  const matcher = opts.allPlatforms
    ? allPlatforms
    : opts.platform
    ? platformMatcherFor({ platform: opts.platform })
    : defaultPlatformMatcher();
  return await withLease(client, async (leased) => {
    const index = await importIndex(leased, source, opts);
    const provider = contentProvider(leased);
    const records: { name: string; target: Descriptor }[] = [];
    if (opts.indexName) records.push({ name: opts.indexName, target: index });

    const top = parseIndex(await provider.readBlob(index), index);
    for (const m of top.manifests) {
      const name = imageName(m.annotations, translate);
      if (name) records.push({ name, target: m });
    }
    // Label what the chosen platforms keep, parents with their children (SetChildrenLabels).
    const seen = new Set<string>();
    const walk = async (desc: Descriptor, children: Descriptor[]): Promise<void> => {
      const kept = filterChildren(desc, children, matcher);
      if (kept.length > 0) await setContentLabels(leased, desc.digest, childGcLabels(kept));
      for (const child of kept) {
        if (seen.has(child.digest)) continue;
        seen.add(child.digest);
        // Everything the images will hold must be in the archive (now in the store).
        const info = await contentInfo(leased, child.digest);
        if (!info) {
          throw notFound(
            `Cannot import: ${child.digest} (${child.mediaType}), named by ${desc.digest}, is not in the archive`,
          );
        }
        if (info.size !== child.size) {
          throw invalidArgument(
            `Cannot import: ${child.digest} has ${info.size} bytes, not the ${child.size} ${desc.digest} names`,
          );
        }
        if (!hasChildren(child.mediaType)) continue;
        await walk(child, childrenOf(child, await provider.readBlob(child)));
      }
    };
    await walk(index, (top as Index).manifests);
    if (seen.size === 0) {
      throw notFound(`Cannot import: the archive has no image for ${matcher.description}`);
    }

    const images: ImageRecord[] = [];
    for (const r of records) {
      const { platform: _p, ...target } = r.target;
      images.push(await putImage(leased, { name: r.name, target }));
    }
    const unpacked: UnpackResult[] = [];
    if (opts.unpack) {
      for (const img of images) {
        unpacked.push(
          await unpack(leased, img, {
            snapshotter: opts.snapshotter,
            matcher: opts.allPlatforms ? defaultPlatformMatcher() : matcher,
            onProgress: opts.onProgress,
            signal: opts.signal,
          }),
        );
      }
    }
    return { images, index, unpacked };
  });
}
