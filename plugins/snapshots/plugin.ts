/**
 * The snapshot plugins, as containerd's: the backend snapshotters
 * (`io.containerd.snapshotter.v1.overlayfs`, `io.containerd.snapshotter.v1.native`), the
 * namespaced snapshots over them (`io.containerd.service.v1.snapshots-service`, which
 * publishes `/snapshot/…` events) and the API (`io.containerd.grpc.v1.snapshots`,
 * `containerd.services.snapshots.v1.Snapshots`).
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import {
  SnapshotCommitSchema,
  SnapshotPrepareSchema,
  SnapshotRemoveSchema,
} from "../../api/gen/containerd/events/snapshot_pb.ts";
import { Snapshots } from "../../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import type { GrpcService } from "../../server/service.ts";
import {
  NativeSnapshotter,
  OverlaySnapshotter,
  REBASE_CAPABILITY,
  type Snapshotter,
} from "../../snapshots/mod.ts";
import { isKind } from "../errdefs.ts";
import { exchangePlugin } from "../events/plugin.ts";
import { leaseManagerPlugin } from "../leases/plugin.ts";
import { collectorFor } from "../metadata/gc.ts";
import { metadataPlugin } from "../metadata/plugin.ts";
import { SnapshotStore } from "../metadata/snapshots.ts";
import { namespacesStorePlugin } from "../namespaces/plugin.ts";
import { hostPlatform } from "../platforms.ts";
import { type InitContext, PluginType, type Registration, skipPlugin } from "../plugin.ts";
import { snapshotsServiceImpl } from "./service.ts";

/** The config of the overlayfs snapshotter, with containerd's keys. */
export interface OverlayConfig {
  /** Where the snapshots live (default: the plugin's root). */
  root_path: string;
  /** Remove snapshot directories at once, not at the next cleanup (containerd's default: no). */
  sync_remove: boolean;
}

/** The config of the native snapshotter. */
export interface NativeConfig {
  /** Where the snapshots live (default: the plugin's root). */
  root_path: string;
}

function rootOf(ic: InitContext<{ root_path: string }>): string {
  const root = ic.config.root_path || ic.root;
  ic.meta.platforms.push(hostPlatform());
  ic.meta.exports["root"] = root;
  return root;
}

/** `io.containerd.snapshotter.v1.overlayfs`: skips itself where overlayfs does not work. */
export const overlayfsPlugin: Registration<Snapshotter, OverlayConfig> = {
  type: PluginType.Snapshot,
  id: "overlayfs",
  config: () => ({ root_path: "", sync_remove: false }),
  init: async (ic) => {
    const root = rootOf(ic);
    ic.meta.capabilities.push(REBASE_CAPABILITY);
    try {
      return await OverlaySnapshotter.open(root, { asyncRemove: !ic.config.sync_remove });
    } catch (err) {
      if (isKind(err, "NotImplemented")) throw skipPlugin((err as Error).message);
      throw err;
    }
  },
};

/** `io.containerd.snapshotter.v1.native`: full copies, works on any filesystem. */
export const nativePlugin: Registration<Snapshotter, NativeConfig> = {
  type: PluginType.Snapshot,
  id: "native",
  config: () => ({ root_path: "" }),
  init: (ic) => NativeSnapshotter.open(rootOf(ic)),
};

/**
 * `io.containerd.service.v1.snapshots-service`: every loaded snapshotter, seen per namespace
 * through the metadata database, with leases, garbage collection and events.
 */
export const snapshotsStorePlugin: Registration<SnapshotStore> = {
  type: PluginType.Service,
  id: "snapshots-service",
  requires: [PluginType.Metadata, PluginType.Snapshot, PluginType.Lease, PluginType.Event],
  init: (ic) => {
    const db = ic.get(metadataPlugin);
    const events = ic.get(exchangePlugin);
    return new SnapshotStore(db, ic.getAll<Snapshotter>(PluginType.Snapshot), {
      gc: collectorFor(db),
      leases: ic.get(leaseManagerPlugin),
      // Looked up at call time: the namespace store is a service plugin too.
      ensureNamespace: (ns) => ic.get(namespacesStorePlugin).ensure(ns),
      publish: (namespace, e) => {
        switch (e.topic) {
          case "/snapshot/prepare":
            events.publish(
              namespace,
              e.topic,
              SnapshotPrepareSchema,
              create(SnapshotPrepareSchema, { key: e.key, parent: e.parent }),
            );
            break;
          case "/snapshot/commit":
            events.publish(
              namespace,
              e.topic,
              SnapshotCommitSchema,
              create(SnapshotCommitSchema, { key: e.key, name: e.name }),
            );
            break;
          case "/snapshot/remove":
            events.publish(
              namespace,
              e.topic,
              SnapshotRemoveSchema,
              create(SnapshotRemoveSchema, { key: e.key }),
            );
            break;
        }
      },
      log: ic.log,
    });
  },
};

/** `io.containerd.grpc.v1.snapshots`: `containerd.services.snapshots.v1.Snapshots`. */
export const snapshotsService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "snapshots",
  requires: [PluginType.Service],
  init: (ic) => {
    const store = ic.get(snapshotsStorePlugin);
    const namespaces = ic.get(namespacesStorePlugin);
    return {
      register(router) {
        router.service(Snapshots, snapshotsServiceImpl(store, namespaces));
      },
    };
  },
};
