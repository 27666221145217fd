/**
 * `tainerd events`: streams the daemon's events as `ctr events` prints them — timestamp,
 * namespace, topic and the payload as JSON — until interrupted.
 *
 * @module
 */

import { Command } from "commander";
import { createRegistry, type Registry, toJson } from "@bufbuild/protobuf";
import { anyUnpack, type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { file_containerd_events_container } from "../api/gen/containerd/events/container_pb.ts";
import { file_containerd_events_content } from "../api/gen/containerd/events/content_pb.ts";
import { file_containerd_events_image } from "../api/gen/containerd/events/image_pb.ts";
import { file_containerd_events_namespace } from "../api/gen/containerd/events/namespace_pb.ts";
import { file_containerd_events_snapshot } from "../api/gen/containerd/events/snapshot_pb.ts";
import { file_containerd_events_task } from "../api/gen/containerd/events/task_pb.ts";
import type { Any } from "@bufbuild/protobuf/wkt";
import type { TainerdClient } from "../client/client.ts";

/** The event payload types containerd publishes. */
export const EVENT_REGISTRY: Registry = createRegistry(
  file_containerd_events_container,
  file_containerd_events_content,
  file_containerd_events_image,
  file_containerd_events_namespace,
  file_containerd_events_snapshot,
  file_containerd_events_task,
);

const encoder = new TextEncoder();

/** A timestamp as Go prints a `time.Time`: `2006-01-02 15:04:05.999999999 +0000 UTC`. */
export function formatGoTime(ts: Timestamp | undefined): string {
  if (!ts) return "0001-01-01 00:00:00 +0000 UTC";
  const d = timestampDate({ ...ts, nanos: 0 });
  const base = d.toISOString().slice(0, 19).replace("T", " ");
  const frac = ts.nanos ? "." + String(ts.nanos).padStart(9, "0").replace(/0+$/, "") : "";
  return `${base}${frac} +0000 UTC`;
}

/** An event payload as JSON with proto field names (as Go's json of containerd's types). */
export function eventJson(event: Any | undefined): string {
  if (!event) return "";
  try {
    const msg = anyUnpack(event, EVENT_REGISTRY);
    if (!msg) return "";
    return JSON.stringify(
      toJson(EVENT_REGISTRY.getMessage(msg.$typeName)!, msg, {
        registry: EVENT_REGISTRY,
        useProtoFieldName: true,
      }),
    );
  } catch {
    return "";
  }
}

/** `tainerd events [filters…]`. */
export function eventsCommand(
  withClient: (fn: (c: TainerdClient) => Promise<void>) => Promise<void>,
): Command {
  return new Command("events").alias("event")
    .description("display the daemon's events as they happen (as ctr events)")
    .argument("[filters...]", 'filters, e.g. topic~="/tasks/"')
    .action((filters: string[]) =>
      withClient(async (c) => {
        for await (const e of c.events.subscribe({ filters })) {
          const line = `${formatGoTime(e.timestamp)} ${e.namespace} ${e.topic} ${
            eventJson(e.event)
          }\n`;
          const bytes = encoder.encode(line);
          for (let off = 0; off < bytes.length;) off += Deno.stdout.writeSync(bytes.subarray(off));
        }
      })
    );
}
