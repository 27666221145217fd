/**
 * Image export to a tar stream over the API, as containerd's `images/archive` exporter: an OCI
 * image layout (`oci-layout`, `index.json` naming each image with `io.containerd.image.name`
 * and `org.opencontainers.image.ref.name`, `blobs/<alg>/<hex>`) plus a Docker
 * `manifest.json`, so `docker load` reads it too. Entries are sorted by name, as containerd
 * writes them; blobs are streamed from the content store and verified on the way.
 *
 * @module
 */

import type { TainerdClient } from "../../client/client.ts";
import { readContent } from "../../client/content.ts";
import { contentProvider } from "../../client/images_content.ts";
import { getImage } from "../../client/images.ts";
import { TarType, type TarWriterEntry, writeTar } from "../../archive/tar/mod.ts";
import { Digester, parseDigest } from "../../plugins/content/digest.ts";
import { failedPrecondition, invalidArgument, notFound } from "../../plugins/errdefs.ts";
import {
  ANNOTATION_IMAGE_NAME,
  ANNOTATION_REF_NAME,
  childrenOf,
  type Descriptor,
  hasChildren,
  isIndexType,
  isManifestType,
  parseIndex,
  parseManifest,
} from "../image.ts";
import {
  hostPlatform,
  onlyStrictPlatform,
  type Platform,
  type PlatformMatcher,
  platformMatcherFor,
} from "../platforms.ts";
import { parseNormalizedNamed, parseReference } from "../reference/reference.ts";
import { descriptorJson } from "./json.ts";
import { OCI_LAYOUT_VERSION, ociReferenceName } from "./importer.ts";

/** Options of {@link exportArchive}. */
export interface ExportOptions {
  /** The platform(s) whose manifests are exported (default: exactly the host's). */
  platform?: string | Platform | (string | Platform)[];
  /** Export the content of every platform (manifest.json still names the preferred one). */
  allPlatforms?: boolean;
  /** Leave out `manifest.json` (no Docker compatibility). */
  skipManifestJson?: boolean;
  signal?: AbortSignal;
}

interface TarRecord {
  name: string;
  mode: number;
  dir?: boolean;
  bytes?: Uint8Array;
  blob?: Descriptor;
}

function blobPath(digest: string): string {
  const { algorithm, hex } = parseDigest(digest);
  return `blobs/${algorithm}/${hex}`;
}

function blobBody(client: TainerdClient, desc: Descriptor, signal?: AbortSignal) {
  const digester = new Digester(parseDigest(desc.digest).algorithm);
  const it = readContent(client, desc.digest, { signal });
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const next = await it.next();
      if (next.done) {
        const actual = digester.digest();
        if (actual !== desc.digest) {
          controller.error(
            failedPrecondition(`Cannot export ${desc.digest}: the store has ${actual}`),
          );
        } else controller.close();
        return;
      }
      digester.update(next.value);
      controller.enqueue(next.value);
    },
    async cancel() {
      await it.return(undefined);
    },
  }, { highWaterMark: 0 });
}

/** The familiar form docker's `manifest.json` uses: `busybox:latest`. */
function familiar(name: string): string {
  const ref = parseNormalizedNamed(name);
  return (ref.tag === undefined && ref.digest === undefined ? parseReference(name) : ref)
    .familiarString();
}

/**
 * Writes the images `names` as an OCI layout tarball to `sink` (closed at the end; aborted on
 * failure).
 *
 * @throws {TainerdError} NotFound for a missing image or content (export one platform, or
 *   pull every platform first); InvalidArgument when an image's target is no manifest.
 */
export async function exportArchive(
  client: TainerdClient,
  names: string[],
  sink: WritableStream<Uint8Array>,
  opts: ExportOptions = {},
): Promise<void> {
  const matcher: PlatformMatcher = opts.platform !== undefined
    ? platformMatcherFor({ platform: opts.platform })
    : onlyStrictPlatform(hostPlatform());
  const provider = contentProvider(client);
  const records = new Map<string, TarRecord>();
  const add = (r: TarRecord) => {
    if (!records.has(r.name)) records.set(r.name, r);
  };
  const algorithms = new Set<string>();
  const walkAll = async (desc: Descriptor): Promise<void> => {
    parseDigest(desc.digest);
    add({ name: blobPath(desc.digest), mode: 0o444, blob: desc });
    algorithms.add(parseDigest(desc.digest).algorithm);
    if (!hasChildren(desc.mediaType)) return;
    let bytes: Uint8Array;
    try {
      bytes = await provider.readBlob(desc);
    } catch (err) {
      if ((err as { kind?: string }).kind === "NotFound") {
        throw notFound(
          `Cannot export ${desc.digest}: its content is missing (export one platform, or pull every platform first)`,
        );
      }
      throw err;
    }
    for (const child of childrenOf(desc, bytes)) await walkAll(child);
  };

  const manifests: Descriptor[] = [];
  // Docker manifests by digest, with the names they carry.
  const docker = new Map<string, { manifest: Descriptor; names: string[] }>();
  const resolvedIndex = new Map<string, string>();
  for (const name of names) {
    const img = await getImage(client, name);
    const target: Descriptor = {
      ...img.target,
      annotations: {
        ...img.target.annotations,
        [ANNOTATION_IMAGE_NAME]: name,
        [ANNOTATION_REF_NAME]: ociReferenceName(name),
      },
    };
    manifests.push(target);
    if (isManifestType(target.mediaType)) {
      if (!docker.has(target.digest)) {
        await walkAll(target);
        docker.set(target.digest, { manifest: target, names: [] });
      }
      docker.get(target.digest)!.names.push(name);
    } else if (isIndexType(target.mediaType)) {
      let chosen = resolvedIndex.get(target.digest);
      if (chosen === undefined) {
        add({ name: blobPath(target.digest), mode: 0o444, blob: target });
        algorithms.add(parseDigest(target.digest).algorithm);
        const idx = parseIndex(await provider.readBlob(target), target);
        const matching: Descriptor[] = [];
        for (const m of idx.manifests) {
          if (!m.platform || matcher.match(m.platform)) matching.push(m);
          else if (!opts.allPlatforms) continue;
          await walkAll(m);
        }
        chosen = "";
        if (matching.length > 0) {
          matching.sort((a, b) => {
            if (!a.platform) return 1;
            if (!b.platform) return -1;
            return matcher.less(a.platform, b.platform)
              ? -1
              : matcher.less(b.platform, a.platform)
              ? 1
              : 0;
          });
          chosen = matching[0].digest;
          if (!docker.has(chosen)) docker.set(chosen, { manifest: matching[0], names: [] });
        } else if (!opts.allPlatforms) {
          throw notFound(
            `Cannot export "${name}": no manifest for platform ${matcher.description}`,
          );
        }
        resolvedIndex.set(target.digest, chosen);
      }
      if (chosen) docker.get(chosen)!.names.push(name);
    } else {
      throw invalidArgument(`Cannot export "${name}": only manifests and indexes can be exported`);
    }
  }

  const encoder = new TextEncoder();
  add({
    name: "oci-layout",
    mode: 0o444,
    bytes: encoder.encode(JSON.stringify({ imageLayoutVersion: OCI_LAYOUT_VERSION })),
  });
  add({
    name: "index.json",
    mode: 0o644,
    bytes: encoder.encode(
      JSON.stringify({ schemaVersion: 2, manifests: manifests.map(descriptorJson) }),
    ),
  });
  if (!opts.skipManifestJson && docker.size > 0) {
    const entries = [];
    for (const { manifest, names: tags } of docker.values()) {
      const m = parseManifest(await provider.readBlob(manifest), manifest);
      entries.push({
        Config: blobPath(m.config.digest),
        RepoTags: tags.length ? tags.map(familiar) : null,
        Layers: m.layers.map((l) => blobPath(l.digest)),
      });
    }
    add({ name: "manifest.json", mode: 0o644, bytes: encoder.encode(JSON.stringify(entries)) });
  }
  if (algorithms.size > 0) {
    add({ name: "blobs/", mode: 0o755, dir: true });
    for (const alg of algorithms) add({ name: `blobs/${alg}/`, mode: 0o755, dir: true });
  }

  const sorted = [...records.values()].sort((
    a,
    b,
  ) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  async function* entries(): AsyncGenerator<TarWriterEntry> {
    for (const r of sorted) {
      opts.signal?.throwIfAborted();
      if (r.dir) yield { header: { name: r.name, type: TarType.Dir, mode: r.mode } };
      else if (r.bytes) {
        yield { header: { name: r.name, mode: r.mode, size: r.bytes.byteLength }, body: r.bytes };
      } else {
        yield {
          header: { name: r.name, mode: r.mode, size: r.blob!.size },
          body: blobBody(client, r.blob!, opts.signal),
        };
      }
    }
  }
  await writeTar(entries()).pipeTo(sink);
}
