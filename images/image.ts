/**
 * The image model, as containerd's `images` package: OCI and Docker schema 2 manifests,
 * indexes and configs; what a descriptor's children are; the GC labels a parent carries for
 * them; platform resolution (which manifest, config and layers an image has for a platform);
 * and layer chain IDs. Everything reads blobs through a {@link BlobProvider}, so it works
 * over the content API as well as over an archive in memory.
 *
 * @module
 */

import { digestOf } from "../plugins/content/digest.ts";
import {
  failedPrecondition,
  invalidArgument,
  notFound,
  notImplemented,
} from "../plugins/errdefs.ts";
import type { Descriptor } from "./remote/descriptor.ts";
import {
  isSchema1MediaType,
  MEDIA_TYPE_DOCKER_CONFIG,
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  MEDIA_TYPE_OCI_CONFIG,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_MANIFEST,
} from "./remote/media_types.ts";
import {
  formatPlatform,
  normalizePlatform,
  type Platform,
  type PlatformMatcher,
} from "./platforms.ts";

export type { Descriptor };

/** Docker uncompressed layer. */
export const MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar";
/** Docker foreign (non-distributable) gzip layer. */
export const MEDIA_TYPE_DOCKER_LAYER_FOREIGN_GZIP =
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/** Docker foreign (non-distributable) layer. */
export const MEDIA_TYPE_DOCKER_LAYER_FOREIGN =
  "application/vnd.docker.image.rootfs.foreign.diff.tar";
/** Docker zstd layer (containerd's name for it). */
export const MEDIA_TYPE_DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/** Docker plugin config. */
export const MEDIA_TYPE_DOCKER_PLUGIN_CONFIG = "application/vnd.docker.plugin.v1+json";
/** containerd checkpoint config. */
export const MEDIA_TYPE_CONTAINERD_CHECKPOINT_CONFIG =
  "application/vnd.containerd.container.checkpoint.config.v1+proto";

/** The annotation containerd names images with inside archives. */
export const ANNOTATION_IMAGE_NAME = "io.containerd.image.name";
/** The OCI annotation naming a manifest in an index (a tag in containerd's archives). */
export const ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name";

/** Labels containerd puts on content and snapshots. */
export const Labels = {
  /** On a compressed layer: the digest of its uncompressed tar (its diff ID). */
  Uncompressed: "containerd.io/uncompressed",
  /** `containerd.io/distribution.source.<registry>`: repositories the blob came from. */
  DistributionSource: "containerd.io/distribution.source.",
  /** On a snapshot being unpacked: the chain ID it will be committed as. */
  SnapshotRef: "containerd.io/snapshot.ref",
  /** `containerd.io/gc.ref.snapshot.<snapshotter>`: the config keeps its unpacked snapshot. */
  GcSnapshotRef: "containerd.io/gc.ref.snapshot.",
  /** On a lease: when it expires (RFC 3339). */
  GcExpire: "containerd.io/gc.expire",
} as const;

/** An OCI (or Docker schema 2) image manifest. */
export interface Manifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
  annotations?: Record<string, string>;
}

/** An OCI image index (or Docker manifest list). */
export interface Index {
  schemaVersion: number;
  mediaType?: string;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

/** The parts of an OCI image config tainerd reads. */
export interface ImageConfigFile {
  architecture?: string;
  os?: string;
  variant?: string;
  config?: {
    User?: string;
    Env?: string[] | null;
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    WorkingDir?: string;
    Labels?: Record<string, string> | null;
    StopSignal?: string;
  };
  rootfs?: { type?: string; diff_ids?: string[] };
}

/** Reads blobs (whole, for manifests and configs). */
export interface BlobProvider {
  /** The bytes of `desc`, verified; NotFound when absent. */
  readBlob(desc: Descriptor): Promise<Uint8Array>;
}

/** Whether `mediaType` is an index or a manifest list. */
export function isIndexType(mediaType: string): boolean {
  return mediaType === MEDIA_TYPE_OCI_INDEX || mediaType === MEDIA_TYPE_DOCKER_MANIFEST_LIST;
}

/** Whether `mediaType` is an image manifest (OCI or Docker schema 2). */
export function isManifestType(mediaType: string): boolean {
  return mediaType === MEDIA_TYPE_OCI_MANIFEST || mediaType === MEDIA_TYPE_DOCKER_MANIFEST;
}

/** Whether `mediaType` is a layer, as containerd's `IsLayerType`. */
export function isLayerType(mediaType: string): boolean {
  if (mediaType.startsWith("application/vnd.oci.image.layer.")) return true;
  const base = mediaType.split("+")[0];
  return [
    MEDIA_TYPE_DOCKER_LAYER,
    MEDIA_TYPE_DOCKER_LAYER_FOREIGN,
    MEDIA_TYPE_DOCKER_LAYER_ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
  ].includes(mediaType) || base === MEDIA_TYPE_DOCKER_LAYER ||
    base === MEDIA_TYPE_DOCKER_LAYER_FOREIGN;
}

/** Whether `mediaType` is a config containerd knows, as its `IsKnownConfig`. */
export function isConfigType(mediaType: string): boolean {
  return [
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_DOCKER_PLUGIN_CONFIG,
    MEDIA_TYPE_CONTAINERD_CHECKPOINT_CONFIG,
  ].includes(mediaType);
}

/** Whether a descriptor's content must be parsed to find children (index or manifest). */
export function hasChildren(mediaType: string): boolean {
  return isIndexType(mediaType) || isManifestType(mediaType);
}

/**
 * The ingest ref containerd uses for a blob (`manifest-sha256:…`, `layer-sha256:…`), as
 * `remotes.MakeRefKey`.
 */
export function refKey(desc: Descriptor): string {
  if (isManifestType(desc.mediaType)) return `manifest-${desc.digest}`;
  if (isIndexType(desc.mediaType)) return `index-${desc.digest}`;
  if (isLayerType(desc.mediaType)) return `layer-${desc.digest}`;
  if (isConfigType(desc.mediaType)) return `config-${desc.digest}`;
  return `unknown-${desc.digest}`;
}

function parseJson<T>(bytes: Uint8Array, desc: Descriptor, what: string): T {
  try {
    const v = JSON.parse(new TextDecoder().decode(bytes));
    if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error("not an object");
    return v as T;
  } catch (err) {
    throw invalidArgument(`Cannot parse the ${what} ${desc.digest}: ${(err as Error).message}`);
  }
}

function checkDescriptors(list: unknown, desc: Descriptor, field: string): Descriptor[] {
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list)) {
    throw invalidArgument(`Invalid ${desc.mediaType} ${desc.digest}: "${field}" is not a list`);
  }
  for (const d of list) {
    if (
      !d || typeof d !== "object" || typeof d.digest !== "string" || typeof d.size !== "number" ||
      typeof (d.mediaType ?? "") !== "string"
    ) {
      throw invalidArgument(
        `Invalid ${desc.mediaType} ${desc.digest}: a bad descriptor in "${field}"`,
      );
    }
    d.mediaType ??= "";
  }
  return list as Descriptor[];
}

function checkMediaType(json: { mediaType?: unknown }, desc: Descriptor): void {
  if (
    typeof json.mediaType === "string" && json.mediaType !== "" && json.mediaType !== desc.mediaType
  ) {
    // containerd's validateMediaType: an index can't pose as a manifest and vice versa.
    const a = isIndexType(json.mediaType), b = isIndexType(desc.mediaType);
    if (a !== b) {
      throw invalidArgument(
        `Invalid ${desc.mediaType} ${desc.digest}: its content says ${json.mediaType}`,
      );
    }
  }
}

/** Parses a manifest's bytes. */
export function parseManifest(bytes: Uint8Array, desc: Descriptor): Manifest {
  const m = parseJson<Manifest & { manifests?: unknown }>(bytes, desc, "manifest");
  checkMediaType(m, desc);
  if (m.manifests !== undefined && m.layers === undefined) {
    throw invalidArgument(`Invalid manifest ${desc.digest}: it is an index`);
  }
  if (!m.config || typeof m.config !== "object") {
    throw invalidArgument(`Invalid manifest ${desc.digest}: it has no config`);
  }
  checkDescriptors([m.config], desc, "config");
  m.layers = checkDescriptors(m.layers, desc, "layers");
  return m;
}

/** Parses an index's bytes. */
export function parseIndex(bytes: Uint8Array, desc: Descriptor): Index {
  const idx = parseJson<Index & { layers?: unknown }>(bytes, desc, "index");
  checkMediaType(idx, desc);
  if (idx.layers !== undefined && idx.manifests === undefined) {
    throw invalidArgument(`Invalid index ${desc.digest}: it is a manifest`);
  }
  idx.manifests = checkDescriptors(idx.manifests, desc, "manifests");
  return idx;
}

/** Parses an image config's bytes. */
export function parseConfig(bytes: Uint8Array, desc: Descriptor): ImageConfigFile {
  return parseJson<ImageConfigFile>(bytes, desc, "image config");
}

/**
 * The children of a blob, given its bytes, as containerd's `images.Children`: an index's
 * manifests; a manifest's config then layers; nothing for anything else.
 *
 * @throws {TainerdError} NotImplemented for schema 1 manifests; InvalidArgument for bad JSON.
 */
export function childrenOf(desc: Descriptor, bytes: Uint8Array): Descriptor[] {
  if (isSchema1MediaType(desc.mediaType)) throw schema1(desc);
  if (isManifestType(desc.mediaType)) {
    const m = parseManifest(bytes, desc);
    return [m.config, ...m.layers];
  }
  if (isIndexType(desc.mediaType)) return parseIndex(bytes, desc).manifests;
  return [];
}

function schema1(desc: Descriptor): Error {
  return notImplemented(
    `Cannot handle ${desc.digest}: Docker schema 1 manifests are not supported`,
  );
}

/**
 * The GC label keys a parent sets for each child (containerd's `ChildGCLabels` as
 * `SetChildrenMappedLabels` numbers them): `containerd.io/gc.ref.content.m.<i>` for
 * manifests, `.config` for the config, `.l.<i>` for layers, `.<i>` for anything else.
 */
export function childGcLabels(children: readonly Descriptor[]): Record<string, string> {
  const labels: Record<string, string> = {};
  const counts = new Map<string, number>();
  for (const child of children) {
    let key: string;
    if (isConfigType(child.mediaType)) key = "containerd.io/gc.ref.content.config";
    else if (isManifestType(child.mediaType)) key = "containerd.io/gc.ref.content.m.";
    else if (isLayerType(child.mediaType)) key = "containerd.io/gc.ref.content.l.";
    else key = "containerd.io/gc.ref.content.";
    const idx = counts.get(key) ?? 0;
    counts.set(key, idx + 1);
    if (idx > 0 || key.endsWith(".")) key = `${key}${idx}`;
    labels[key] = child.digest;
  }
  return labels;
}

/**
 * Keeps the children whose platform matches (or that name none), as containerd's
 * `FilterPlatforms`; for an index, the manifests are sorted by preference and cut to
 * `limit` when it is positive (`LimitManifests`).
 *
 * @throws {TainerdError} NotFound when a limit is set and no manifest of an index matches.
 */
export function filterChildren(
  parent: Descriptor,
  children: readonly Descriptor[],
  matcher: PlatformMatcher,
  limit = 0,
): Descriptor[] {
  let out = children.filter((c) => !c.platform || matcher.match(c.platform));
  if (isIndexType(parent.mediaType)) {
    out = stableSort(out, (a, b) => {
      if (!a.platform) return b.platform ? 1 : 0;
      if (!b.platform) return -1;
      return matcher.less(a.platform, b.platform)
        ? -1
        : matcher.less(b.platform, a.platform)
        ? 1
        : 0;
    });
    if (limit > 0) {
      if (out.length === 0) {
        throw notFound(
          `No manifest for platform ${matcher.description} in ${parent.digest}`,
        );
      }
      out = out.slice(0, limit);
    }
  }
  return out;
}

function stableSort<T>(list: T[], cmp: (a: T, b: T) => number): T[] {
  return list.map((v, i) => [v, i] as const).sort((a, b) => cmp(a[0], b[0]) || a[1] - b[1])
    .map(([v]) => v);
}

/** The platform an image config declares. */
export function configPlatform(config: ImageConfigFile): Platform {
  const p: Platform = { os: config.os ?? "", architecture: config.architecture ?? "" };
  if (config.variant) p.variant = config.variant;
  return normalizePlatform(p);
}

/** An image's manifest for a platform, with its config and layers. */
export interface ResolvedManifest {
  /** The manifest's descriptor (with the platform it was listed under, if any). */
  desc: Descriptor;
  manifest: Manifest;
  config: ImageConfigFile;
  /** The platform the config declares. */
  platform: Platform;
}

/**
 * The manifest of `target` for `matcher`'s best platform, as containerd's `images.Manifest`:
 * indexes are searched (nested ones too), a manifest without a listed platform is judged by
 * its config.
 *
 * @throws {TainerdError} NotFound when no manifest matches, or content is missing.
 */
export async function resolveManifest(
  provider: BlobProvider,
  target: Descriptor,
  matcher: PlatformMatcher,
): Promise<ResolvedManifest> {
  const found: ResolvedManifest[] = [];
  const visit = async (desc: Descriptor, depth: number): Promise<void> => {
    if (depth > 8) throw invalidArgument(`Cannot resolve ${target.digest}: indexes nest too deep`);
    if (isSchema1MediaType(desc.mediaType)) throw schema1(desc);
    if (isManifestType(desc.mediaType)) {
      if (desc.platform && !matcher.match(desc.platform)) return;
      const manifest = parseManifest(await provider.readBlob(desc), desc);
      const config = parseConfig(await provider.readBlob(manifest.config), manifest.config);
      const platform = configPlatform(config);
      if (!desc.platform && config.os && !matcher.match(platform)) return;
      found.push({ desc, manifest, config, platform });
      return;
    }
    if (isIndexType(desc.mediaType)) {
      const idx = parseIndex(await provider.readBlob(desc), desc);
      for (const m of idx.manifests) {
        if (m.platform && !matcher.match(m.platform)) continue;
        await visit(m, depth + 1);
      }
      return;
    }
    throw notFound(`Cannot resolve ${desc.digest}: unexpected media type ${desc.mediaType}`);
  };
  await visit(target, 0);
  if (found.length === 0) {
    throw notFound(`No manifest for platform ${matcher.description} in ${target.digest}`);
  }
  const sorted = stableSort(found, (a, b) => {
    const pa = a.desc.platform ?? a.platform, pb = b.desc.platform ?? b.platform;
    return matcher.less(pa, pb) ? -1 : matcher.less(pb, pa) ? 1 : 0;
  });
  return sorted[0];
}

/** The diff IDs of a config (the uncompressed digests of its layers, bottom first). */
export function diffIds(config: ImageConfigFile, desc?: Descriptor): string[] {
  const ids = config.rootfs?.diff_ids;
  if (!Array.isArray(ids) || ids.some((d) => typeof d !== "string")) {
    throw invalidArgument(
      `Invalid image config${desc ? ` ${desc.digest}` : ""}: no rootfs.diff_ids`,
    );
  }
  return ids;
}

/**
 * The chain IDs of a layer stack, as the OCI image spec defines them: the first is the first
 * diff ID, each next one `sha256(parent + " " + diffID)`.
 */
export function chainIds(diffIdList: readonly string[]): string[] {
  const out: string[] = [];
  for (const d of diffIdList) {
    out.push(out.length === 0 ? d : digestOf(`${out[out.length - 1]} ${d}`));
  }
  return out;
}

/** The chain ID of a whole layer stack ("" for none). */
export function chainId(diffIdList: readonly string[]): string {
  const ids = chainIds(diffIdList);
  return ids.length ? ids[ids.length - 1] : "";
}

/** Checks that a manifest and its config agree on the number of layers. */
export function checkLayerCount(r: ResolvedManifest): string[] {
  const ids = diffIds(r.config, r.manifest.config);
  if (ids.length !== r.manifest.layers.length) {
    throw failedPrecondition(
      `Image manifest ${r.desc.digest} has ${r.manifest.layers.length} layers but its config lists ${ids.length} diff IDs`,
    );
  }
  return ids;
}

/**
 * Every platform an image has, as containerd's `images.Platforms`: those listed in its
 * indexes (as listed), or its config's OS and architecture for a lone manifest. Missing
 * content is skipped.
 */
export async function platformsOf(
  provider: BlobProvider,
  target: Descriptor,
): Promise<Platform[]> {
  const out: Platform[] = [];
  const visit = async (desc: Descriptor, depth: number): Promise<void> => {
    if (depth > 8) return;
    if (isManifestType(desc.mediaType)) {
      if (desc.platform) {
        out.push(asListed(desc.platform));
        return;
      }
      try {
        const m = parseManifest(await provider.readBlob(desc), desc);
        const config = parseConfig(await provider.readBlob(m.config), m.config);
        if (config.os) {
          out.push(normalizePlatform({ os: config.os, architecture: config.architecture ?? "" }));
        }
      } catch (err) {
        if (!isNotFoundError(err)) throw err;
      }
      return;
    }
    if (isIndexType(desc.mediaType)) {
      let idx: Index;
      try {
        idx = parseIndex(await provider.readBlob(desc), desc);
      } catch (err) {
        if (isNotFoundError(err)) return;
        throw err;
      }
      for (const m of idx.manifests) {
        if (m.platform && isManifestType(m.mediaType)) out.push(asListed(m.platform));
        else await visit(m, depth + 1);
      }
    }
  };
  await visit(target, 0);
  const seen = new Set<string>();
  return out.filter((p) => {
    const k = formatPlatform(p);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

function asListed(p: Platform): Platform {
  const out: Platform = { os: p.os, architecture: p.architecture };
  if (p.variant) out.variant = p.variant;
  return out;
}

function isNotFoundError(err: unknown): boolean {
  return (err as { kind?: string })?.kind === "NotFound";
}

/**
 * Walks an image from `target` (parents before children), calling `visit` on every descriptor
 * whose content is wanted, filtered by `matcher` as containerd's `FilterPlatforms`. Returns
 * the descriptors in walk order, without duplicates.
 */
export async function walkImage(
  provider: BlobProvider,
  target: Descriptor,
  matcher: PlatformMatcher,
  opts: { limit?: number; skipMissing?: boolean } = {},
): Promise<Descriptor[]> {
  const out: Descriptor[] = [];
  const seen = new Set<string>();
  const visit = async (desc: Descriptor): Promise<void> => {
    if (seen.has(desc.digest)) return;
    seen.add(desc.digest);
    out.push(desc);
    if (!hasChildren(desc.mediaType)) return;
    let bytes: Uint8Array;
    try {
      bytes = await provider.readBlob(desc);
    } catch (err) {
      if (opts.skipMissing && isNotFoundError(err)) return;
      throw err;
    }
    const children = filterChildren(desc, childrenOf(desc, bytes), matcher, opts.limit ?? 0);
    for (const child of children) await visit(child);
  };
  await visit(target);
  return out;
}
