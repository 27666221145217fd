/**
 * The API adapter of the differs: `containerd.services.diff.v1.Diff` over the
 * {@link DiffService}, as containerd's `services/diff`.
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import type { Diff } from "../../api/gen/containerd/services/diff/v1/diff_pb.ts";
import {
  type Descriptor as PbDescriptor,
  DescriptorSchema,
} from "../../api/gen/containerd/types/descriptor_pb.ts";
import type { Mount as PbMount } from "../../api/gen/containerd/types/mount_pb.ts";
import { leaseOf, namespaceRequired } from "../../server/context.ts";
import type { Mount } from "../../sys/mount.ts";
import { invalidArgument } from "../errdefs.ts";
import type { Scope } from "../metadata/leases.ts";
import type { Descriptor, Differ } from "./walking.ts";

function scopeOf(ctx: HandlerContext): Scope {
  return { namespace: namespaceRequired(ctx), lease: leaseOf(ctx) };
}

function mountsFromPb(mounts: readonly PbMount[]): Mount[] {
  return mounts.map((m) => ({ type: m.type, source: m.source, options: [...m.options] }));
}

function descriptorToPb(d: Descriptor): PbDescriptor {
  return create(DescriptorSchema, {
    mediaType: d.mediaType,
    digest: d.digest,
    size: BigInt(d.size),
    annotations: d.annotations ?? {},
  });
}

/** The implementation of the Diff service. */
export function diffServiceImpl(differ: Differ): ServiceImpl<typeof Diff> {
  return {
    apply: async (req, ctx) => {
      const scope = scopeOf(ctx);
      if (!req.diff) throw invalidArgument("The request has no diff descriptor");
      const size = req.diff.size;
      if (size > BigInt(Number.MAX_SAFE_INTEGER) || size < 0n) {
        throw invalidArgument(`The diff size ${size} is out of range`);
      }
      const applied = await differ.apply(
        scope,
        {
          mediaType: req.diff.mediaType,
          digest: req.diff.digest,
          size: Number(size),
          annotations: { ...req.diff.annotations },
        },
        mountsFromPb(req.mounts),
        { payloads: { ...req.payloads }, signal: ctx.signal },
      );
      return { applied: descriptorToPb(applied) };
    },
    diff: async (req, ctx) => {
      const scope = scopeOf(ctx);
      const desc = await differ.compare(scope, mountsFromPb(req.left), mountsFromPb(req.right), {
        mediaType: req.mediaType,
        ref: req.ref,
        labels: { ...req.labels },
        signal: ctx.signal,
      });
      return { diff: descriptorToPb(desc) };
    },
  };
}
