/**
 * The API adapter of the snapshots: `containerd.services.snapshots.v1.Snapshots` over the
 * namespaced {@link SnapshotStore}, as containerd's `services/snapshots`. The request's
 * `snapshotter` picks the backend; when it is empty (ctr always sends one: it resolves the
 * default itself), the namespace's `containerd.io/defaults/snapshotter` label, else
 * `overlayfs`, is used. An unknown snapshotter is InvalidArgument, as containerd.
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  type Info as PbInfo,
  InfoSchema,
  Kind as PbKind,
  ListSnapshotsResponseSchema,
  type Snapshots,
} from "../../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import { type Mount as PbMount, MountSchema } from "../../api/gen/containerd/types/mount_pb.ts";
import { leaseOf, namespaceRequired } from "../../server/context.ts";
import type { Info, Kind, Mount } from "../../snapshots/snapshotter.ts";
import { invalidArgument } from "../errdefs.ts";
import type { Scope } from "../metadata/leases.ts";
import type { MetadataSnapshotter, SnapshotStore } from "../metadata/snapshots.ts";
import type { NamespaceStore } from "../namespaces/store.ts";

/** The snapshotter used when neither the request nor the namespace names one. */
export const DEFAULT_SNAPSHOTTER = "overlayfs";

/** The namespace label that names a namespace's default snapshotter (as containerd). */
export const DEFAULT_SNAPSHOTTER_LABEL = "containerd.io/defaults/snapshotter";

/** How many infos one List response carries, as containerd. */
export const LIST_BATCH = 100;

const KIND_TO_PB: Record<Kind, PbKind> = {
  active: PbKind.ACTIVE,
  view: PbKind.VIEW,
  committed: PbKind.COMMITTED,
};

/** A snapshot's metadata as the API shows it. */
export function infoToPb(info: Info): PbInfo {
  return create(InfoSchema, {
    name: info.name,
    parent: info.parent,
    kind: KIND_TO_PB[info.kind],
    createdAt: timestampFromDate(info.created),
    updatedAt: timestampFromDate(info.updated),
    labels: info.labels,
  });
}

/** Mounts as the API shows them. */
export function mountsToPb(mounts: readonly Mount[]): PbMount[] {
  return mounts.map((m) =>
    create(MountSchema, { type: m.type, source: m.source, options: [...(m.options ?? [])] })
  );
}

function scopeOf(ctx: HandlerContext): Scope {
  return { namespace: namespaceRequired(ctx), lease: leaseOf(ctx) };
}

/** The implementation of the Snapshots service. */
export function snapshotsServiceImpl(
  store: SnapshotStore,
  namespaces: NamespaceStore,
): Partial<ServiceImpl<typeof Snapshots>> {
  /** The snapshotter a request names, or the namespace's default. */
  const pick = (namespace: string, name: string): MetadataSnapshotter => {
    if (name === "") {
      name = DEFAULT_SNAPSHOTTER;
      try {
        name = namespaces.get(namespace).labels[DEFAULT_SNAPSHOTTER_LABEL] || name;
      } catch {
        // No such namespace yet: the global default.
      }
    }
    return store.snapshotter(name);
  };
  return {
    prepare: async (req, ctx) => {
      const scope = scopeOf(ctx);
      const sn = pick(scope.namespace, req.snapshotter);
      return {
        mounts: mountsToPb(await sn.prepare(scope, req.key, req.parent, { labels: req.labels })),
      };
    },
    view: async (req, ctx) => {
      const scope = scopeOf(ctx);
      const sn = pick(scope.namespace, req.snapshotter);
      return {
        mounts: mountsToPb(await sn.view(scope, req.key, req.parent, { labels: req.labels })),
      };
    },
    mounts: async (req, ctx) => {
      const ns = namespaceRequired(ctx);
      return { mounts: mountsToPb(await pick(ns, req.snapshotter).mounts(ns, req.key)) };
    },
    commit: async (req, ctx) => {
      const scope = scopeOf(ctx);
      await pick(scope.namespace, req.snapshotter).commit(scope, req.name, req.key, {
        labels: req.labels,
        parent: req.parent,
      });
      return {};
    },
    remove: async (req, ctx) => {
      const scope = scopeOf(ctx);
      await pick(scope.namespace, req.snapshotter).remove(scope, req.key);
      return {};
    },
    stat: async (req, ctx) => {
      const ns = namespaceRequired(ctx);
      return { info: infoToPb(await pick(ns, req.snapshotter).stat(ns, req.key)) };
    },
    update: async (req, ctx) => {
      const ns = namespaceRequired(ctx);
      if (!req.info) throw invalidArgument("The request has no snapshot info");
      const info = await pick(ns, req.snapshotter).update(
        ns,
        { name: req.info.name, labels: { ...req.info.labels } },
        req.updateMask?.paths ?? [],
      );
      return { info: infoToPb(info) };
    },
    async *list(req, ctx) {
      const ns = namespaceRequired(ctx);
      const sn = pick(ns, req.snapshotter);
      const infos: PbInfo[] = [];
      await sn.walk(ns, (info) => {
        infos.push(infoToPb(info));
      }, req.filters);
      for (let i = 0; i < infos.length; i += LIST_BATCH) {
        yield create(ListSnapshotsResponseSchema, { info: infos.slice(i, i + LIST_BATCH) });
      }
    },
    usage: async (req, ctx) => {
      const ns = namespaceRequired(ctx);
      const u = await pick(ns, req.snapshotter).usage(ns, req.key);
      return { size: BigInt(u.size), inodes: BigInt(u.inodes) };
    },
    cleanup: async (req, ctx) => {
      const ns = namespaceRequired(ctx);
      await pick(ns, req.snapshotter).cleanup();
      return {};
    },
  };
}
