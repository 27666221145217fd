/**
 * The lease plugins: the manager (`io.containerd.lease.v1.manager`), the service containerd's
 * clients look up (`io.containerd.service.v1.leases-service`, the same manager) and the API
 * (`io.containerd.grpc.v1.leases`, `containerd.services.leases.v1.Leases`).
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Lease as PbLease,
  Leases,
  LeaseSchema,
  ResourceSchema,
} from "../../api/gen/containerd/services/leases/v1/leases_pb.ts";
import { namespaceRequired } from "../../server/context.ts";
import type { GrpcService } from "../../server/service.ts";
import { invalidArgument } from "../errdefs.ts";
import { collectorFor } from "../metadata/gc.ts";
import { type Lease, LeaseManager } from "../metadata/leases.ts";
import { metadataPlugin } from "../metadata/plugin.ts";
import { namespacesStorePlugin } from "../namespaces/plugin.ts";
import { PluginType, type Registration } from "../plugin.ts";

/** `io.containerd.lease.v1.manager`: leases in the metadata database. */
export const leaseManagerPlugin: Registration<LeaseManager> = {
  type: PluginType.Lease,
  id: "manager",
  requires: [PluginType.Metadata],
  init: (ic) => {
    const db = ic.get(metadataPlugin);
    // Looked up at call time: the namespace store is a service plugin, initialised later.
    return new LeaseManager(db, collectorFor(db), (ns) => ic.get(namespacesStorePlugin).ensure(ns));
  },
};

/** `io.containerd.service.v1.leases-service`: the lease manager, as a service. */
export const leasesStorePlugin: Registration<LeaseManager> = {
  type: PluginType.Service,
  id: "leases-service",
  requires: [PluginType.Lease],
  init: (ic) => ic.get(leaseManagerPlugin),
};

function toPb(l: Lease): PbLease {
  return create(LeaseSchema, {
    id: l.id,
    createdAt: timestampFromDate(l.createdAt),
    labels: l.labels,
  });
}

/** `io.containerd.grpc.v1.leases`: `containerd.services.leases.v1.Leases`. */
export const leasesService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "leases",
  requires: [PluginType.Service],
  init: (ic) => {
    const leases = ic.get(leasesStorePlugin);
    return {
      register(router) {
        router.service(Leases, {
          create: (req, ctx) => ({
            lease: toPb(leases.create(namespaceRequired(ctx), { id: req.id, labels: req.labels })),
          }),
          delete: async (req, ctx) => {
            await leases.delete(namespaceRequired(ctx), req.id, { sync: req.sync });
            return {};
          },
          list: (req, ctx) => ({
            leases: leases.list(namespaceRequired(ctx), req.filters).map(toPb),
          }),
          addResource: (req, ctx) => {
            if (!req.resource) throw invalidArgument("The request has no resource");
            leases.addResource(namespaceRequired(ctx), req.id, {
              id: req.resource.id,
              type: req.resource.type,
            });
            return {};
          },
          deleteResource: (req, ctx) => {
            if (!req.resource) throw invalidArgument("The request has no resource");
            leases.deleteResource(namespaceRequired(ctx), req.id, {
              id: req.resource.id,
              type: req.resource.type,
            });
            return {};
          },
          listResources: (req, ctx) => ({
            resources: leases.listResources(namespaceRequired(ctx), req.id).map((r) =>
              create(ResourceSchema, r)
            ),
          }),
        });
      },
    };
  },
};
