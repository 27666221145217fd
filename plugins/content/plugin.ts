/**
 * The content plugins, as containerd's: the shared local store
 * (`io.containerd.content.v1.content`), the namespaced store over the metadata database
 * (`io.containerd.service.v1.content-service`) and its API (`io.containerd.grpc.v1.content`).
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { Content } from "../../api/gen/containerd/services/content/v1/content_pb.ts";
import { ContentDeleteSchema } from "../../api/gen/containerd/events/content_pb.ts";
import type { GrpcService } from "../../server/service.ts";
import { exchangePlugin } from "../events/plugin.ts";
import { leaseManagerPlugin } from "../leases/plugin.ts";
import { MetadataContentStore } from "../metadata/content.ts";
import { collectorFor } from "../metadata/gc.ts";
import { metadataPlugin } from "../metadata/plugin.ts";
import { namespacesStorePlugin } from "../namespaces/plugin.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { LocalStore } from "./local_store.ts";
import { contentServiceImpl } from "./service.ts";

/** `io.containerd.content.v1.content`: the blobs, shared by every namespace. */
export const contentPlugin: Registration<LocalStore> = {
  type: PluginType.Content,
  id: "content",
  init: async (ic) => {
    const store = await LocalStore.open(ic.root);
    ic.meta.exports["root"] = store.root;
    return store;
  },
};

/**
 * `io.containerd.service.v1.content-service`: content per namespace, with labels, leases and
 * garbage collection; publishes `/content/delete`.
 */
export const contentStorePlugin: Registration<MetadataContentStore> = {
  type: PluginType.Service,
  id: "content-service",
  requires: [PluginType.Metadata, PluginType.Content, PluginType.Lease, PluginType.Event],
  init: (ic) => {
    const db = ic.get(metadataPlugin);
    const events = ic.get(exchangePlugin);
    return new MetadataContentStore(db, ic.get(contentPlugin), {
      gc: collectorFor(db),
      leases: ic.get(leaseManagerPlugin),
      // Looked up at call time: the namespace store is a service plugin too.
      ensureNamespace: (ns) => ic.get(namespacesStorePlugin).ensure(ns),
      publishDelete: (namespace, digest) =>
        events.publish(
          namespace,
          "/content/delete",
          ContentDeleteSchema,
          create(ContentDeleteSchema, { digest }),
        ),
      log: ic.log,
    });
  },
};

/** `io.containerd.grpc.v1.content`: `containerd.services.content.v1.Content`. */
export const contentService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "content",
  requires: [PluginType.Service],
  init: (ic) => {
    const store = ic.get(contentStorePlugin);
    return {
      register(router) {
        router.service(Content, contentServiceImpl(store));
      },
    };
  },
};
