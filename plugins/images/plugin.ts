/**
 * The images plugins: the store (`io.containerd.service.v1.images-service`) and its API
 * (`io.containerd.grpc.v1.images`, `containerd.services.images.v1.Images`).
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Image as PbImage,
  Images,
  ImageSchema,
} from "../../api/gen/containerd/services/images/v1/images_pb.ts";
import {
  ImageCreateSchema,
  ImageDeleteSchema,
  ImageUpdateSchema,
} from "../../api/gen/containerd/events/image_pb.ts";
import { namespaceRequired } from "../../server/context.ts";
import type { GrpcService } from "../../server/service.ts";
import { invalidArgument } from "../errdefs.ts";
import { exchangePlugin } from "../events/plugin.ts";
import { type Filter, objectAdaptor, parseAll } from "../filters/mod.ts";
import { collectorFor } from "../metadata/gc.ts";
import { metadataPlugin } from "../metadata/plugin.ts";
import { namespacesStorePlugin } from "../namespaces/plugin.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { type Image, ImageStore } from "./store.ts";

/** `io.containerd.service.v1.images-service`: the image store. */
export const imagesStorePlugin: Registration<ImageStore> = {
  type: PluginType.Service,
  id: "images-service",
  requires: [PluginType.Metadata],
  init: (ic) => {
    const db = ic.get(metadataPlugin);
    const store = new ImageStore(db, ic.get(namespacesStorePlugin));
    store.registerGc(collectorFor(db));
    return store;
  },
};

/** The protobuf form of an image. */
export function imageToPb(img: Image): PbImage {
  return create(ImageSchema, {
    name: img.name,
    labels: img.labels,
    target: {
      mediaType: img.target.mediaType,
      digest: img.target.digest,
      size: BigInt(img.target.size),
      annotations: img.target.annotations,
    },
    createdAt: timestampFromDate(img.createdAt),
    updatedAt: timestampFromDate(img.updatedAt),
  });
}

function fromPb(img: PbImage | undefined): Image {
  if (!img) throw invalidArgument("The request has no image");
  return {
    name: img.name,
    labels: { ...img.labels },
    target: {
      mediaType: img.target?.mediaType ?? "",
      digest: img.target?.digest ?? "",
      size: Number(img.target?.size ?? 0n),
      annotations: { ...(img.target?.annotations ?? {}) },
    },
    createdAt: new Date(0),
    updatedAt: new Date(0),
  };
}

/** Whether an image matches a filter (name, target.digest, target.mediatype, labels, annotations). */
export function imageMatches(filter: Filter, img: Image): boolean {
  return filter.match(objectAdaptor({
    fields: {
      name: img.name,
      "target.digest": img.target.digest,
      "target.mediatype": img.target.mediaType,
    },
    labels: img.labels,
    maps: { annotations: img.target.annotations },
  }));
}

/** Something that collects garbage after deletions (the GC scheduler). */
export interface GarbageCollector {
  /** Runs a collection now and waits for it. */
  collect(): Promise<unknown>;
  /** Notes a deletion (may schedule a collection). */
  deleted?(): void;
}

/** `io.containerd.grpc.v1.images`. */
export const imagesService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "images",
  requires: [PluginType.Service, PluginType.Event],
  init: (ic) => {
    const store = ic.get(imagesStorePlugin);
    const events = ic.get(exchangePlugin);
    // The GC scheduler starts after every other plugin: look it up when it is needed.
    const gc = (): GarbageCollector | undefined => {
      try {
        return ic.getByType<GarbageCollector>(PluginType.GC);
      } catch {
        return undefined;
      }
    };
    return {
      register(router) {
        router.service(Images, {
          get: (req, ctx) => ({ image: imageToPb(store.get(namespaceRequired(ctx), req.name)) }),
          list: (req, ctx) => {
            const filter = parseAll(req.filters);
            return {
              images: store.list(namespaceRequired(ctx)).filter((i) => imageMatches(filter, i))
                .map(imageToPb),
            };
          },
          create: (req, ctx) => {
            const ns = namespaceRequired(ctx);
            const img = store.create(ns, fromPb(req.image));
            events.publish(
              ns,
              "/images/create",
              ImageCreateSchema,
              create(ImageCreateSchema, { name: img.name, labels: img.labels }),
            );
            return { image: imageToPb(img) };
          },
          update: (req, ctx) => {
            const ns = namespaceRequired(ctx);
            const img = store.update(ns, fromPb(req.image), req.updateMask?.paths ?? []);
            events.publish(
              ns,
              "/images/update",
              ImageUpdateSchema,
              create(ImageUpdateSchema, { name: img.name, labels: img.labels }),
            );
            return { image: imageToPb(img) };
          },
          delete: async (req, ctx) => {
            const ns = namespaceRequired(ctx);
            store.delete(ns, req.name);
            events.publish(
              ns,
              "/images/delete",
              ImageDeleteSchema,
              create(ImageDeleteSchema, { name: req.name }),
            );
            if (req.sync) await gc()?.collect();
            else gc()?.deleted?.();
            return {};
          },
        });
      },
    };
  },
};
