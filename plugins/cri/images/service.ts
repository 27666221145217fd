/**
 * The CRI image service (`runtime.v1.ImageService`), as containerd 1.6's CRI plugin serves it
 * (`pkg/cri/server/image_*.go`), over the daemon's own API through the client library:
 *
 * - PullImage normalises the reference (`busybox` → `docker.io/library/busybox:latest`),
 *   pulls the host platform and unpacks it into the CRI snapshotter, then points three image
 *   records at it — the reference, the repo digest (`repo@sha256:…`) and the image id
 *   (`sha256:<config digest>`) — all labelled `io.cri-containerd.image=managed`; the answer
 *   is the image id.
 * - ListImages groups the namespace's image records by image id (the config digest of the
 *   host platform's manifest): repo tags, repo digests, size, user, pinned.
 * - ImageStatus finds an image by reference, repo digest, id or unique id prefix; a missing
 *   image is an empty answer, not an error.
 * - RemoveImage deletes every record of the image, the last one synchronously (garbage is
 *   collected before it answers); a missing image is a success.
 * - ImageFsInfo reports the snapshotter directory's usage (see {@link DiskUsageCache}).
 *
 * ```ts
 * const images = new CriImageService({
 *   client, // a TainerdClient for namespace "k8s.io"
 *   snapshotter: "overlayfs",
 *   registryConfigPath: "/etc/tainerd/certs.d",
 *   snapshotterRoot: "/var/lib/tainerd/io.containerd.snapshotter.v1.overlayfs",
 * });
 * images.register(router);
 * ```
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import {
  type AuthConfig,
  type FilesystemUsage,
  FilesystemUsageSchema,
  type Image,
  type ImageFsInfoRequest,
  type ImageFsInfoResponse,
  ImageFsInfoResponseSchema,
  ImageSchema,
  ImageService,
  type ImageStatusRequest,
  type ImageStatusResponse,
  ImageStatusResponseSchema,
  type ListImagesRequest,
  type ListImagesResponse,
  ListImagesResponseSchema,
  type PullImageRequest,
  type PullImageResponse,
  PullImageResponseSchema,
  type RemoveImageRequest,
  type RemoveImageResponse,
  RemoveImageResponseSchema,
  type StreamImagesRequest,
  type StreamImagesResponse,
  StreamImagesResponseSchema,
} from "../../../api/gen/runtime/v1/api_pb.ts";
import type { TainerdClient } from "../../../client/client.ts";
import {
  deleteImage,
  type ImageRecord,
  listImages as listImageRecords,
  putImage,
} from "../../../client/images.ts";
import { contentProvider } from "../../../client/images_content.ts";
import { type Descriptor, walkImage } from "../../../images/image.ts";
import { defaultPlatformMatcher } from "../../../images/platforms.ts";
import { pull } from "../../../images/pull.ts";
import { parseDockerRef } from "../../../images/reference/reference.ts";
import { Resolver } from "../../../images/remote/resolver.ts";
import { imageRootfs } from "../../../images/unpack.ts";
import type { Logger } from "../../../log.ts";
import { internal, invalidArgument, isNotFound, TainerdError } from "../../errdefs.ts";
import { credentialsProvider } from "./auth.ts";
import { DiskUsageCache } from "./fs_usage.ts";

/** The label CRI puts on the image records it creates. */
export const IMAGE_LABEL_KEY = "io.cri-containerd.image";
/** The value of {@link IMAGE_LABEL_KEY}. */
export const IMAGE_LABEL_MANAGED = "managed";
/** The label marking an image pinned (never garbage-collected by kubelet), as containerd 1.7. */
export const PINNED_LABEL_KEY = "io.cri-containerd.pinned";
/** The value of {@link PINNED_LABEL_KEY}. */
export const PINNED_LABEL_VALUE = "pinned";

const ID_RE = /^sha256:[0-9a-f]{64}$/;
const ID_PREFIX_RE = /^(?:sha256:)?([0-9a-f]{1,64})$/;
/** Images per StreamImages message. */
const STREAM_CHUNK = 100;

/** An OCI image config, parsed as a whole (`config`, `rootfs`, `history`…). */
export type OciImageConfig = Record<string, unknown> & {
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
    ExposedPorts?: Record<string, unknown> | null;
    Volumes?: Record<string, unknown> | null;
  };
  rootfs?: { type?: string; diff_ids?: string[] };
};

/** An image as CRI sees it: every record sharing one config digest. */
export interface CriImage {
  /** `sha256:<config digest>`. */
  id: string;
  /** The preferred name: the first repo tag, else the first repo digest, else the id. */
  name: string;
  /** The target of the record named {@link CriImage.name} (an index or a manifest). */
  target: Descriptor;
  /** The host platform's manifest. */
  manifest: Descriptor;
  /** The image config (the "imageSpec"). */
  config: OciImageConfig;
  /** The chain id of the layer stack: the snapshot containers are prepared on. */
  chainId: string;
  /** Tagged references (`docker.io/library/busybox:latest`), sorted. */
  repoTags: string[];
  /** Digest references (`docker.io/library/busybox@sha256:…`), sorted. */
  repoDigests: string[];
  /** Every record name of the image (tags, digests, the id), sorted, the id last. */
  references: string[];
  /** Bytes of the blobs the host platform uses (index, manifest, config, layers; compressed). */
  size: number;
  /** Whether the image is pinned (the sandbox image, or labelled so). */
  pinned: boolean;
}

/** Options of {@link CriImageService}. */
export interface CriImageServiceOptions {
  /** A client of the daemon for the CRI namespace (`k8s.io`). */
  client: TainerdClient;
  /** The snapshotter images are unpacked into. */
  snapshotter: string;
  /** The hosts directory (`certs.d`-style `hosts.toml` per registry); "" for none. */
  registryConfigPath: string;
  /** The snapshotter's directory, whose usage ImageFsInfo reports. */
  snapshotterRoot: string;
  /** References reported as pinned (the sandbox image). */
  pinned?: () => string[];
  /** How long an ImageFsInfo walk is reused, in milliseconds (default 5000). */
  fsInfoCacheMs?: number;
  log?: Logger;
}

/** What an image record's target resolves to (content is immutable: cached by digest). */
interface TargetInfo {
  id: string;
  manifest: Descriptor;
  config: OciImageConfig;
  chainId: string;
  size: number;
}

/** The normalised form of a reference, or undefined when it is not one. */
function normalize(ref: string): string | undefined {
  if (ID_RE.test(ref)) return undefined;
  try {
    return parseDockerRef(ref).toString();
  } catch {
    return undefined;
  }
}

/** containerd's `getUserFromImage`: a numeric user is a uid, anything else a user name. */
function userOf(config: OciImageConfig): { uid?: bigint; username: string } {
  const user = config.config?.User ?? "";
  if (user === "") return { username: "" };
  const name = user.split(":")[0];
  if (/^-?\d+$/.test(name)) {
    try {
      return { uid: BigInt(name), username: "" };
    } catch {
      // Not a number after all.
    }
  }
  return { username: name };
}

/** The CRI image service over a daemon client. */
export class CriImageService {
  readonly #client: TainerdClient;
  readonly #snapshotter: string;
  readonly #hostsDir: string;
  readonly #snapshotterRoot: string;
  readonly #pinned: () => string[];
  readonly #log?: Logger;
  readonly #du: DiskUsageCache;
  readonly #targets = new Map<string, Promise<TargetInfo>>();

  constructor(opts: CriImageServiceOptions) {
    this.#client = opts.client;
    this.#snapshotter = opts.snapshotter;
    this.#hostsDir = opts.registryConfigPath;
    this.#snapshotterRoot = opts.snapshotterRoot;
    this.#pinned = opts.pinned ?? (() => []);
    this.#log = opts.log;
    this.#du = new DiskUsageCache(opts.snapshotterRoot, opts.fsInfoCacheMs);
  }

  /**
   * Pulls an image (host platform), unpacks it and records it under its reference, repo
   * digest and id.
   *
   * @throws {TainerdError} InvalidArgument for a malformed reference or auth config;
   *   NotFound when the registry has no such image; PermissionDenied when it refuses access.
   */
  async pullImage(req: PullImageRequest): Promise<PullImageResponse> {
    const id = await this.#pull(req.image?.image ?? "", req.auth);
    return create(PullImageResponseSchema, { imageRef: id });
  }

  /** Every image (or those matching the filter's image), grouped by id. */
  async listImages(req: ListImagesRequest): Promise<ListImagesResponse> {
    const wanted = req.filter?.image?.image ?? "";
    let images = await this.#images();
    if (wanted !== "") {
      const match = this.#find(images, wanted);
      images = match ? [match] : [];
    }
    return create(ListImagesResponseSchema, { images: images.map((i) => this.#toCri(i)) });
  }

  /**
   * The image named by reference, repo digest, id or unique id prefix; an empty answer when
   * there is none. `verbose` adds `info["info"]`: JSON with the `imageSpec` and `chainID`.
   *
   * @throws {TainerdError} InvalidArgument when an id prefix is ambiguous.
   */
  async imageStatus(req: ImageStatusRequest): Promise<ImageStatusResponse> {
    const img = await this.resolve(req.image?.image ?? "");
    if (!img) return create(ImageStatusResponseSchema, {});
    const info: Record<string, string> = {};
    if (req.verbose) {
      info.info = JSON.stringify({ chainID: img.chainId, imageSpec: img.config });
    }
    return create(ImageStatusResponseSchema, { image: this.#toCri(img), info });
  }

  /**
   * Removes every record of the image (the last one synchronously, so its content and
   * snapshots are collected). Removing a missing image succeeds.
   */
  async removeImage(req: RemoveImageRequest): Promise<RemoveImageResponse> {
    const img = await this.resolve(req.image?.image ?? "");
    if (img) {
      const refs = img.references;
      for (let i = 0; i < refs.length; i++) {
        try {
          await deleteImage(this.#client, refs[i], { sync: i === refs.length - 1 });
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
      this.#log?.debug("removed CRI image", { id: img.id, refs: refs.join(",") });
    }
    return create(RemoveImageResponseSchema, {});
  }

  /** Usage of the snapshotter's directory, for images and (the same filesystem) containers. */
  async imageFsInfo(_req?: ImageFsInfoRequest): Promise<ImageFsInfoResponse> {
    const u = await this.#du.get();
    const usage = (): FilesystemUsage =>
      create(FilesystemUsageSchema, {
        timestamp: BigInt(u.at) * 1_000_000n,
        fsId: { mountpoint: this.#snapshotterRoot },
        usedBytes: { value: BigInt(u.bytes) },
        inodesUsed: { value: BigInt(u.inodes) },
      });
    return create(ImageFsInfoResponseSchema, {
      imageFilesystems: [usage()],
      containerFilesystems: [usage()],
    });
  }

  /** {@link listImages} in chunks, for `StreamImages`. */
  async *streamImages(req: StreamImagesRequest): AsyncGenerator<StreamImagesResponse> {
    const { images } = await this.listImages({ ...req, $typeName: "runtime.v1.ListImagesRequest" });
    for (let i = 0; i < images.length; i += STREAM_CHUNK) {
      yield create(StreamImagesResponseSchema, { images: images.slice(i, i + STREAM_CHUNK) });
    }
  }

  /**
   * The image a reference (`busybox`, `docker.io/library/busybox:latest`), repo digest,
   * id (`sha256:…`) or unique id prefix (with or without `sha256:`) names; undefined when none.
   *
   * @throws {TainerdError} InvalidArgument when an id prefix matches several images.
   */
  async resolve(ref: string): Promise<CriImage | undefined> {
    if (ref === "") return undefined;
    return this.#find(await this.#images(), ref);
  }

  /**
   * The image `ref` names, pulled first when it is missing (the sandbox image).
   *
   * @throws {TainerdError} as {@link pullImage}.
   */
  async ensure(ref: string, auth?: AuthConfig): Promise<CriImage> {
    const have = await this.resolve(ref);
    if (have) return have;
    const id = await this.#pull(ref, auth);
    const img = await this.resolve(id);
    if (!img) throw internal(`Image ${ref} (${id}) vanished right after it was pulled`);
    return img;
  }

  /** Adds `runtime.v1.ImageService` to the router. */
  register(router: ConnectRouter): void {
    router.service(ImageService, {
      listImages: (req) => this.listImages(req),
      streamImages: (req) => this.streamImages(req),
      imageStatus: (req) => this.imageStatus(req),
      pullImage: (req) => this.pullImage(req),
      removeImage: (req) => this.removeImage(req),
      imageFsInfo: (req) => this.imageFsInfo(req),
    });
  }

  async #pull(raw: string, auth: AuthConfig | undefined): Promise<string> {
    if (raw.trim() === "") throw invalidArgument("Cannot pull an image: no image reference given");
    const ref = parseDockerRef(raw);
    const name = ref.toString();
    const resolver = new Resolver({
      hostDir: this.#hostsDir === "" ? undefined : this.#hostsDir,
      credentials: credentialsProvider(auth),
      logger: this.#log,
    });
    const labels = { [IMAGE_LABEL_KEY]: IMAGE_LABEL_MANAGED };
    const started = Date.now();
    let target: Descriptor;
    try {
      const result = await pull(this.#client, name, {
        resolver,
        name,
        labels,
        unpack: { snapshotter: this.#snapshotter },
      });
      target = result.image.target;
    } catch (err) {
      throw pullError(name, err);
    } finally {
      resolver.close();
    }
    const info = await this.#info(target);
    const repoDigest = `${ref.name}@${target.digest}`;
    for (const n of [repoDigest, info.id]) {
      if (n !== name) await putImage(this.#client, { name: n, target, labels });
    }
    this.#log?.info("pulled CRI image", {
      ref: name,
      id: info.id,
      digest: target.digest,
      ms: Date.now() - started,
    });
    return info.id;
  }

  /** What a target resolves to for the host platform, cached by digest. */
  #info(target: Descriptor): Promise<TargetInfo> {
    let p = this.#targets.get(target.digest);
    if (!p) {
      p = (async () => {
        const root = await imageRootfs(this.#client, target);
        const blobs = await walkImage(
          contentProvider(this.#client),
          target,
          defaultPlatformMatcher(),
          { skipMissing: true },
        );
        return {
          id: root.manifest.config.digest,
          manifest: root.desc,
          config: root.config as OciImageConfig,
          chainId: root.chainId,
          size: blobs.reduce((n, d) => n + d.size, 0),
        };
      })();
      this.#targets.set(target.digest, p);
      p.catch(() => this.#targets.delete(target.digest));
    }
    return p;
  }

  /** Every image of the namespace, grouped by id, sorted by id. */
  async #images(): Promise<CriImage[]> {
    const records = await listImageRecords(this.#client);
    const infos = await Promise.all(records.map(async (rec) => {
      try {
        return await this.#info(rec.target);
      } catch (err) {
        // Content missing, another platform only, schema 1…: not an image CRI can use.
        this.#log?.debug("skipping image record", { name: rec.name, error: String(err) });
        return undefined;
      }
    }));
    const live = new Set(records.map((r) => r.target.digest));
    for (const digest of this.#targets.keys()) if (!live.has(digest)) this.#targets.delete(digest);

    const groups = new Map<string, { info: TargetInfo; records: ImageRecord[] }>();
    records.forEach((rec, i) => {
      const info = infos[i];
      if (!info) return;
      const g = groups.get(info.id);
      if (g) g.records.push(rec);
      else groups.set(info.id, { info, records: [rec] });
    });
    const pinnedRefs = new Set<string>();
    for (const p of this.#pinned()) {
      pinnedRefs.add(p);
      const n = normalize(p);
      if (n) pinnedRefs.add(n);
    }
    const out: CriImage[] = [];
    for (const [id, { info, records: recs }] of groups) {
      const repoTags: string[] = [];
      const repoDigests: string[] = [];
      const names = recs.map((r) => r.name).sort();
      for (const n of names) {
        if (ID_RE.test(n)) continue;
        let parsed;
        try {
          parsed = parseDockerRef(n);
        } catch {
          continue;
        }
        if (parsed.digest !== undefined) repoDigests.push(parsed.toString());
        else if (parsed.tag !== undefined) repoTags.push(parsed.toString());
      }
      const name = repoTags[0] ?? repoDigests[0] ?? id;
      const target = (recs.find((r) => r.name === name) ?? recs[0]).target;
      const pinned = recs.some((r) =>
        r.labels[PINNED_LABEL_KEY] === PINNED_LABEL_VALUE || pinnedRefs.has(r.name)
      ) || pinnedRefs.has(id);
      out.push({
        id,
        name,
        target,
        manifest: info.manifest,
        config: info.config,
        chainId: info.chainId,
        repoTags: [...new Set(repoTags)],
        repoDigests: [...new Set(repoDigests)],
        references: [
          ...names.filter((n) =>
            n !== id
          ),
          ...names.filter((n) => n === id),
        ],
        size: info.size,
        pinned,
      });
    }
    return out.sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  }

  /** containerd's `localResolve` over a listing. */
  #find(images: CriImage[], ref: string): CriImage | undefined {
    if (ID_RE.test(ref)) return images.find((i) => i.id === ref);
    const normalized = normalize(ref);
    if (normalized !== undefined) {
      const byRef = images.find((i) => i.references.includes(normalized));
      if (byRef) return byRef;
    }
    const m = ID_PREFIX_RE.exec(ref);
    if (!m) return undefined;
    const matches = images.filter((i) => i.id.slice("sha256:".length).startsWith(m[1]));
    if (matches.length > 1) {
      throw invalidArgument(
        `Image id prefix "${ref}" is ambiguous: it matches ${matches.length} images`,
      );
    }
    return matches[0];
  }

  #toCri(img: CriImage): Image {
    const { uid, username } = userOf(img.config);
    return create(ImageSchema, {
      id: img.id,
      repoTags: img.repoTags,
      repoDigests: img.repoDigests,
      size: BigInt(img.size),
      uid: uid === undefined ? undefined : { value: uid },
      username,
      spec: { image: img.id },
      pinned: img.pinned,
    });
  }
}

/** A pull failure with the image named, its class kept. */
function pullError(name: string, err: unknown): TainerdError {
  const msg = err instanceof Error ? err.message : String(err);
  const text = `Failed to pull image "${name}": ${msg}`;
  if (err instanceof TainerdError) return new TainerdError(err.kind, text, { cause: err });
  return internal(text, { cause: err });
}
