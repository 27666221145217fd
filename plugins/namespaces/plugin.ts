/**
 * The namespaces plugins: the store (`io.containerd.service.v1.namespaces-service`) and its
 * API (`io.containerd.grpc.v1.namespaces`).
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import {
  type Namespace as PbNamespace,
  Namespaces,
  NamespaceSchema,
} from "../../api/gen/containerd/services/namespaces/v1/namespace_pb.ts";
import {
  NamespaceCreateSchema,
  NamespaceDeleteSchema,
  NamespaceUpdateSchema,
} from "../../api/gen/containerd/events/namespace_pb.ts";
import type { GrpcService } from "../../server/service.ts";
import { invalidArgument } from "../errdefs.ts";
import { exchangePlugin } from "../events/plugin.ts";
import { parseAll } from "../filters/mod.ts";
import { metadataPlugin } from "../metadata/plugin.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { type Namespace, NamespaceStore } from "./store.ts";

/** `io.containerd.service.v1.namespaces-service`: the namespace store. */
export const namespacesStorePlugin: Registration<NamespaceStore> = {
  type: PluginType.Service,
  id: "namespaces-service",
  requires: [PluginType.Metadata, PluginType.Event],
  init: (ic) => {
    const events = ic.get(exchangePlugin);
    return new NamespaceStore(ic.get(metadataPlugin), (topic, ns) => {
      // Namespace events are published in the namespace they are about, as containerd does.
      if (topic === "/namespaces/create") {
        events.publish(ns.name, topic, NamespaceCreateSchema, create(NamespaceCreateSchema, ns));
      } else if (topic === "/namespaces/update") {
        events.publish(ns.name, topic, NamespaceUpdateSchema, create(NamespaceUpdateSchema, ns));
      } else {
        events.publish(ns.name, topic, NamespaceDeleteSchema, create(NamespaceDeleteSchema, ns));
      }
    });
  },
};

function toPb(ns: Namespace): PbNamespace {
  return create(NamespaceSchema, { name: ns.name, labels: ns.labels });
}

function fromPb(ns: PbNamespace | undefined, what: string): Namespace {
  if (!ns) throw invalidArgument(`The ${what} request has no namespace`);
  return { name: ns.name, labels: { ...ns.labels } };
}

/** `io.containerd.grpc.v1.namespaces`: `containerd.services.namespaces.v1.Namespaces`. */
export const namespacesService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "namespaces",
  requires: [PluginType.Service],
  init: (ic) => {
    const store = ic.get(namespacesStorePlugin);
    return {
      register(router) {
        router.service(Namespaces, {
          get: (req) => ({ namespace: toPb(store.get(req.name)) }),
          list: (req) => {
            const filter = parseAll(req.filter ? [req.filter] : []);
            return {
              namespaces: store.list().filter((ns) =>
                filter.match((path) => {
                  if (path[0] === "name" && path.length === 1) {
                    return { value: ns.name, present: true };
                  }
                  if (path[0] === "labels" && path.length > 1) {
                    const v = ns.labels[path.slice(1).join(".")];
                    return { value: v ?? "", present: v !== undefined };
                  }
                  return { value: "", present: false };
                })
              ).map(toPb),
            };
          },
          create: (req) => {
            const ns = fromPb(req.namespace, "create");
            return { namespace: toPb(store.create(ns.name, ns.labels)) };
          },
          update: (req) => {
            const ns = fromPb(req.namespace, "update");
            return { namespace: toPb(store.update(ns, req.updateMask?.paths ?? [])) };
          },
          delete: (req) => {
            store.delete(req.name);
            return {};
          },
        });
      },
    };
  },
};
