/**
 * The containers plugins: the store (`io.containerd.service.v1.containers-service`) and its
 * API (`io.containerd.grpc.v1.containers`, `containerd.services.containers.v1.Containers`).
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Container as PbContainer,
  Containers,
  ContainerSchema,
} from "../../api/gen/containerd/services/containers/v1/containers_pb.ts";
import {
  ContainerCreateSchema,
  ContainerDeleteSchema,
  ContainerUpdateSchema,
} from "../../api/gen/containerd/events/container_pb.ts";
import { namespaceRequired } from "../../server/context.ts";
import type { GrpcService } from "../../server/service.ts";
import { invalidArgument } from "../errdefs.ts";
import { exchangePlugin } from "../events/plugin.ts";
import { type Filter, objectAdaptor, parseAll } from "../filters/mod.ts";
import { collectorFor } from "../metadata/gc.ts";
import { metadataPlugin } from "../metadata/plugin.ts";
import { namespacesStorePlugin } from "../namespaces/plugin.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { type AnyValue, type Container, ContainerStore } from "./store.ts";

/** `io.containerd.service.v1.containers-service`: the container store. */
export const containersStorePlugin: Registration<ContainerStore> = {
  type: PluginType.Service,
  id: "containers-service",
  requires: [PluginType.Metadata],
  init: (ic) => {
    const db = ic.get(metadataPlugin);
    const store = new ContainerStore(db, ic.get(namespacesStorePlugin));
    store.registerGc(collectorFor(db));
    return store;
  },
};

function anyToPb(a: AnyValue | undefined) {
  return a ? { typeUrl: a.typeUrl, value: a.value } : undefined;
}

/** The protobuf form of a container. */
export function containerToPb(c: Container): PbContainer {
  return create(ContainerSchema, {
    id: c.id,
    labels: c.labels,
    image: c.image,
    runtime: { name: c.runtime.name, options: anyToPb(c.runtime.options) },
    spec: anyToPb(c.spec),
    snapshotter: c.snapshotter,
    snapshotKey: c.snapshotKey,
    createdAt: timestampFromDate(c.createdAt),
    updatedAt: timestampFromDate(c.updatedAt),
    extensions: Object.fromEntries(
      Object.entries(c.extensions).map(([k, v]) => [k, { typeUrl: v.typeUrl, value: v.value }]),
    ),
  });
}

function fromPb(c: PbContainer | undefined): Container {
  if (!c) throw invalidArgument("The request has no container");
  const any = (a?: { typeUrl: string; value: Uint8Array }) =>
    a ? { typeUrl: a.typeUrl, value: a.value } : undefined;
  return {
    id: c.id,
    labels: { ...c.labels },
    image: c.image,
    runtime: { name: c.runtime?.name ?? "", options: any(c.runtime?.options) },
    spec: any(c.spec),
    snapshotter: c.snapshotter,
    snapshotKey: c.snapshotKey,
    createdAt: new Date(0),
    updatedAt: new Date(0),
    extensions: Object.fromEntries(
      Object.entries(c.extensions).map(([k, v]) => [k, { typeUrl: v.typeUrl, value: v.value }]),
    ),
  };
}

/** The filter adaptor of a container (id, image, runtime.name, labels.*). */
export function containerMatches(filter: Filter, c: Container): boolean {
  return filter.match(objectAdaptor({
    fields: { id: c.id, image: c.image, "runtime.name": c.runtime.name },
    labels: c.labels,
  }));
}

/** `io.containerd.grpc.v1.containers`. */
export const containersService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "containers",
  requires: [PluginType.Service, PluginType.Event],
  init: (ic) => {
    const store = ic.get(containersStorePlugin);
    const events = ic.get(exchangePlugin);
    const list = (ns: string, filters: string[]) => {
      const filter = parseAll(filters);
      return store.list(ns).filter((c) => containerMatches(filter, c));
    };
    return {
      register(router) {
        router.service(Containers, {
          get: (req, ctx) => ({
            container: containerToPb(store.get(namespaceRequired(ctx), req.id)),
          }),
          list: (req, ctx) => ({
            containers: list(namespaceRequired(ctx), req.filters).map(containerToPb),
          }),
          async *listStream(req, ctx) {
            for (const c of list(namespaceRequired(ctx), req.filters)) {
              yield { container: containerToPb(c) };
            }
          },
          create: (req, ctx) => {
            const ns = namespaceRequired(ctx);
            const c = store.create(ns, fromPb(req.container));
            events.publish(
              ns,
              "/containers/create",
              ContainerCreateSchema,
              create(ContainerCreateSchema, {
                id: c.id,
                image: c.image,
                runtime: { name: c.runtime.name, options: anyToPb(c.runtime.options) },
              }),
            );
            return { container: containerToPb(c) };
          },
          update: (req, ctx) => {
            const ns = namespaceRequired(ctx);
            const c = store.update(ns, fromPb(req.container), req.updateMask?.paths ?? []);
            events.publish(
              ns,
              "/containers/update",
              ContainerUpdateSchema,
              create(ContainerUpdateSchema, {
                id: c.id,
                image: c.image,
                labels: c.labels,
                snapshotKey: c.snapshotKey,
              }),
            );
            return { container: containerToPb(c) };
          },
          delete: (req, ctx) => {
            const ns = namespaceRequired(ctx);
            store.delete(ns, req.id);
            events.publish(
              ns,
              "/containers/delete",
              ContainerDeleteSchema,
              create(ContainerDeleteSchema, { id: req.id }),
            );
            return {};
          },
        });
      },
    };
  },
};
