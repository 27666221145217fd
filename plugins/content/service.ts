/**
 * The API adapter of the content store: `containerd.services.content.v1.Content` over the
 * namespaced {@link MetadataContentStore}, as containerd's `contentserver`. The Write stream
 * follows containerd's protocol exactly: the first message names the ref (and may declare
 * the total and the expected digest); every message is answered with the ingest's offset;
 * STAT reports the status, WRITE appends at the current offset (an offset of 0 on a
 * non-empty ingest starts it over, any other offset must equal the current one), COMMIT
 * verifies and records the blob and ends the stream.
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  type Content,
  type Info as PbInfo,
  InfoSchema,
  ListContentResponseSchema,
  ReadContentResponseSchema,
  type Status as PbStatus,
  StatusSchema,
  WriteAction,
  type WriteContentRequest,
  type WriteContentResponse,
  WriteContentResponseSchema,
} from "../../api/gen/containerd/services/content/v1/content_pb.ts";
import { leaseOf, namespaceRequired } from "../../server/context.ts";
import { alreadyExists, invalidArgument, outOfRange } from "../errdefs.ts";
import type { ContentInfo, IngestStatus, MetadataContentStore } from "../metadata/content.ts";
import type { Scope } from "../metadata/leases.ts";

/** How many infos one List response carries, as containerd. */
export const LIST_BATCH = 100;

function scopeOf(ctx: HandlerContext): Scope {
  return { namespace: namespaceRequired(ctx), lease: leaseOf(ctx) };
}

/** An int64 from the wire as a safe number; InvalidArgument beyond 2^53. */
function toNumber(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw invalidArgument(`The ${what} ${value} is out of range`);
  }
  return Number(value);
}

/** A content record as the API shows it. */
export function infoToPb(info: ContentInfo): PbInfo {
  return create(InfoSchema, {
    digest: info.digest,
    size: BigInt(info.size),
    createdAt: timestampFromDate(info.createdAt),
    updatedAt: timestampFromDate(info.updatedAt),
    labels: info.labels,
  });
}

/** An ingest status as the API shows it. */
export function statusToPb(st: IngestStatus): PbStatus {
  return create(StatusSchema, {
    ref: st.ref,
    offset: BigInt(st.offset),
    total: BigInt(st.total),
    expected: st.expected,
    startedAt: timestampFromDate(st.startedAt),
    updatedAt: timestampFromDate(st.updatedAt),
  });
}

/** The implementation of `containerd.services.content.v1.Content`. */
export function contentServiceImpl(store: MetadataContentStore): ServiceImpl<typeof Content> {
  return {
    info(req, ctx) {
      return { info: infoToPb(store.info(namespaceRequired(ctx), req.digest)) };
    },

    update(req, ctx) {
      if (!req.info) throw invalidArgument("The update request has no info");
      const info = store.update(
        namespaceRequired(ctx),
        { digest: req.info.digest, labels: { ...req.info.labels } },
        req.updateMask?.paths ?? [],
      );
      return { info: infoToPb(info) };
    },

    async *list(req, ctx) {
      const infos = store.list(namespaceRequired(ctx), req.filters);
      for (let i = 0; i < infos.length; i += LIST_BATCH) {
        yield create(ListContentResponseSchema, {
          info: infos.slice(i, i + LIST_BATCH).map(infoToPb),
        });
      }
    },

    delete(req, ctx) {
      store.delete(scopeOf(ctx), req.digest);
      return {};
    },

    async *read(req, ctx) {
      let offset = toNumber(req.offset, "read offset");
      const size = toNumber(req.size, "read size");
      if (offset < 0) offset = 0;
      const namespace = namespaceRequired(ctx);
      // Manifests, configs, indexes: one read, one message.
      const small = store.readSmallSync(namespace, req.digest, { offset, size }, SMALL_READ);
      if (small !== null) {
        yield create(ReadContentResponseSchema, { offset: BigInt(offset), data: small });
        return;
      }
      const stream = await store.read(namespace, req.digest, { offset, size });
      for await (const data of stream) {
        yield create(ReadContentResponseSchema, { offset: BigInt(offset), data });
        offset += data.byteLength;
      }
    },

    async status(req, ctx) {
      return { status: statusToPb(await store.status(namespaceRequired(ctx), req.ref)) };
    },

    async listStatuses(req, ctx) {
      const statuses = await store.listStatuses(namespaceRequired(ctx), req.filters);
      return { statuses: statuses.map(statusToPb) };
    },

    write(requests, ctx) {
      return writeStream(store, scopeOf(ctx), requests);
    },

    async abort(req, ctx) {
      await store.abort(scopeOf(ctx), req.ref);
      return {};
    },
  };
}

/** Reads up to this size are answered with one synchronous read (see readSmallSync). */
const SMALL_READ = 256 * 1024;

/** containerd's `contentserver.Write`, one response per request. */
async function* writeStream(
  store: MetadataContentStore,
  scope: Scope,
  requests: AsyncIterable<WriteContentRequest>,
): AsyncGenerator<WriteContentResponse> {
  const it = requests[Symbol.asyncIterator]();
  let next = await it.next();
  if (next.done) return;
  let req = next.value;
  const ref = req.ref;
  if (ref === "") throw invalidArgument("The first write message must have a ref");
  let total = Math.max(0, toNumber(req.total, "total"));
  let expected = req.expected;
  const w = await store.writer(scope, ref, { total, expected });
  try {
    for (;;) {
      const st = w.status();
      const msg = create(WriteContentResponseSchema, {
        action: req.action,
        offset: BigInt(st.offset),
      });
      if (req.expected !== "") {
        expected = req.expected;
        if (store.has(scope.namespace, req.expected)) {
          await w.close();
          await store.abort(scope, ref).catch(() => {});
          throw alreadyExists(`Blob with expected digest ${req.expected} exists`);
        }
      }
      const reqTotal = toNumber(req.total, "total");
      if (reqTotal > 0) total = reqTotal;

      switch (req.action) {
        case WriteAction.STAT:
          msg.digest = w.digest();
          msg.startedAt = timestampFromDate(st.startedAt);
          msg.updatedAt = timestampFromDate(st.updatedAt);
          msg.total = BigInt(total);
          break;
        case WriteAction.WRITE:
        case WriteAction.COMMIT: {
          const offset = toNumber(req.offset, "write offset");
          if (offset < 0) throw invalidArgument(`Write offset ${offset} must not be negative`);
          if (offset > 0 && offset !== st.offset) {
            throw outOfRange(
              `Write at offset ${offset} of ingest "${ref}" must occur at the current offset ` +
                `${st.offset}`,
            );
          }
          if (offset === 0 && st.offset > 0) {
            await w.truncate(0);
            msg.offset = 0n;
          }
          if (req.data.byteLength > 0) {
            const n = await w.write(req.data);
            msg.offset += BigInt(n);
          }
          if (req.action === WriteAction.COMMIT) {
            const labels = Object.keys(req.labels).length > 0 ? { ...req.labels } : undefined;
            await w.commit(total, expected, { labels });
          }
          msg.digest = w.digest();
          break;
        }
        default:
          throw invalidArgument(`Unknown write action ${req.action}`);
      }
      yield msg;
      if (req.action === WriteAction.COMMIT) return;
      next = await it.next();
      if (next.done) return;
      req = next.value;
    }
  } finally {
    await w.close();
  }
}
