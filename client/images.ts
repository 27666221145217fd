/**
 * The image store over the API (`containerd.services.images.v1.Images`), as containerd's
 * `ImageService` plus the `Image` helpers `ctr images` uses: records with plain descriptors,
 * create-or-update, tag, remove, and an image's size and platforms.
 *
 * ```ts
 * import { getImage, imageSize, listImages } from "./client/images.ts";
 * for (const img of await listImages(client)) console.log(img.name, img.target.digest);
 * ```
 *
 * @module
 */

import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  type Image as PbImage,
  Images,
} from "../api/gen/containerd/services/images/v1/images_pb.ts";
import type { Client } from "@connectrpc/connect";
import { isNotFound } from "../plugins/errdefs.ts";
import { type Descriptor, platformsOf, walkImage } from "../images/image.ts";
import {
  defaultPlatformMatcher,
  type Platform,
  type PlatformMatcher,
} from "../images/platforms.ts";
import type { TainerdClient } from "./client.ts";
import { contentInfo, contentProvider } from "./images_content.ts";

/** An image record: a name, labels and the descriptor of its root manifest or index. */
export interface ImageRecord {
  name: string;
  labels: Record<string, string>;
  target: Descriptor;
  createdAt?: Date;
  updatedAt?: Date;
}

/** The typed client of the Images service. */
export function imagesService(client: TainerdClient): Client<typeof Images> {
  return client.service(Images);
}

/** An image record from its protobuf form. */
export function imageFromPb(img: PbImage): ImageRecord {
  const t = img.target;
  const target: Descriptor = {
    mediaType: t?.mediaType ?? "",
    digest: t?.digest ?? "",
    size: Number(t?.size ?? 0n),
  };
  if (t && Object.keys(t.annotations).length > 0) target.annotations = { ...t.annotations };
  return {
    name: img.name,
    labels: { ...img.labels },
    target,
    createdAt: img.createdAt ? timestampDate(img.createdAt) : undefined,
    updatedAt: img.updatedAt ? timestampDate(img.updatedAt) : undefined,
  };
}

function toPb(img: Pick<ImageRecord, "name" | "target"> & { labels?: Record<string, string> }) {
  return {
    name: img.name,
    labels: img.labels ?? {},
    target: {
      mediaType: img.target.mediaType,
      digest: img.target.digest,
      size: BigInt(img.target.size),
      annotations: img.target.annotations ?? {},
    },
  };
}

/**
 * The image `name`.
 *
 * @throws {TainerdError} NotFound when there is none.
 */
export async function getImage(client: TainerdClient, name: string): Promise<ImageRecord> {
  const { image } = await imagesService(client).get({ name });
  if (!image) throw new Error(`The daemon sent no image for "${name}"`);
  return imageFromPb(image);
}

/** The images matching any of `filters` (all without filters), as ctr lists them. */
export async function listImages(
  client: TainerdClient,
  filters: string[] = [],
): Promise<ImageRecord[]> {
  const { images } = await imagesService(client).list({ filters });
  return images.map(imageFromPb);
}

/**
 * Points `img.name` at `img.target` (with `img.labels`): updates the image when it exists
 * (target and labels), creates it otherwise — as containerd's pull and import do.
 */
export async function putImage(
  client: TainerdClient,
  img: Pick<ImageRecord, "name" | "target"> & { labels?: Record<string, string> },
): Promise<ImageRecord> {
  const svc = imagesService(client);
  const paths = ["target", ...(img.labels ? ["labels"] : [])];
  for (let attempt = 0;; attempt++) {
    try {
      const { image } = await svc.update({ image: toPb(img), updateMask: { paths } });
      return imageFromPb(image!);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    try {
      const { image } = await svc.create({ image: toPb(img) });
      return imageFromPb(image!);
    } catch (err) {
      // Created meanwhile by someone else: update it.
      if ((err as { kind?: string }).kind !== "AlreadyExists" || attempt > 2) throw err;
    }
  }
}

/** Creates an image; AlreadyExists when the name is taken. */
export async function createImage(
  client: TainerdClient,
  img: Pick<ImageRecord, "name" | "target"> & { labels?: Record<string, string> },
): Promise<ImageRecord> {
  const { image } = await imagesService(client).create({ image: toPb(img) });
  return imageFromPb(image!);
}

/**
 * Removes the image `name`; with `sync` the daemon collects garbage before answering.
 *
 * @throws {TainerdError} NotFound when there is none.
 */
export async function deleteImage(
  client: TainerdClient,
  name: string,
  opts: { sync?: boolean } = {},
): Promise<void> {
  await imagesService(client).delete({ name, sync: opts.sync ?? false });
}

/**
 * Gives the image `source` another name, as `ctr images tag`: the new image has the same
 * target and labels. With `force` an existing `target` name is replaced.
 */
export async function tagImage(
  client: TainerdClient,
  source: string,
  target: string,
  opts: { force?: boolean } = {},
): Promise<ImageRecord> {
  const src = await getImage(client, source);
  const img = { name: target, target: src.target, labels: src.labels };
  if (opts.force) return await putImage(client, img);
  return await createImage(client, img);
}

/**
 * The size of an image for a platform (the host's by default): the sum of the blobs a pull
 * for that platform keeps (index, manifest, config and layers), as containerd's
 * `Image.Size`. Content that is missing is counted at its descriptor's size.
 */
export async function imageSize(
  client: TainerdClient,
  img: ImageRecord,
  matcher: PlatformMatcher = defaultPlatformMatcher(),
): Promise<number> {
  const descs = await walkImage(contentProvider(client), img.target, matcher, {
    skipMissing: true,
  });
  return descs.reduce((n, d) => n + d.size, 0);
}

/** Every platform an image lists (deduplicated, normalised). */
export async function imagePlatforms(
  client: TainerdClient,
  img: ImageRecord,
): Promise<Platform[]> {
  return await platformsOf(contentProvider(client), img.target);
}

/**
 * Whether the namespace has every blob of an image for a platform, as `ctr images check`
 * reports it: the missing descriptors.
 */
export async function missingContent(
  client: TainerdClient,
  img: ImageRecord,
  matcher: PlatformMatcher = defaultPlatformMatcher(),
): Promise<Descriptor[]> {
  const descs = await walkImage(contentProvider(client), img.target, matcher, {
    skipMissing: true,
  });
  const missing: Descriptor[] = [];
  for (const d of descs) if (!(await contentInfo(client, d.digest))) missing.push(d);
  return missing;
}
