/**
 * The registry of event message types, so events can be decoded by type URL (for filters on
 * `event.<field>` and for printing).
 *
 * @module
 */

import {
  createRegistry,
  type DescField,
  type DescMessage,
  fromBinary,
  type Registry,
} from "@bufbuild/protobuf";
import { file_containerd_events_container } from "../../api/gen/containerd/events/container_pb.ts";
import { file_containerd_events_content } from "../../api/gen/containerd/events/content_pb.ts";
import { file_containerd_events_image } from "../../api/gen/containerd/events/image_pb.ts";
import { file_containerd_events_namespace } from "../../api/gen/containerd/events/namespace_pb.ts";
import { file_containerd_events_snapshot } from "../../api/gen/containerd/events/snapshot_pb.ts";
import { file_containerd_events_task } from "../../api/gen/containerd/events/task_pb.ts";
import type { EventAny } from "./exchange.ts";

/** Every containerd event type. */
export const EVENT_REGISTRY: Registry = createRegistry(
  file_containerd_events_container,
  file_containerd_events_content,
  file_containerd_events_image,
  file_containerd_events_namespace,
  file_containerd_events_snapshot,
  file_containerd_events_task,
);

/** The message type named by a type URL (`containerd.events.TaskExit`, with or without a host prefix). */
export function eventSchema(typeUrl: string): DescMessage | undefined {
  const name = typeUrl.slice(typeUrl.lastIndexOf("/") + 1);
  return EVENT_REGISTRY.getMessage(name);
}

/**
 * The value at a field path of an event (`["container_id"]`, `["labels", "k"]`), as a string,
 * or undefined when the event type is unknown or the path is absent.
 */
export function eventField(event: EventAny, path: readonly string[]): string | undefined {
  const schema = eventSchema(event.typeUrl);
  if (!schema || path.length === 0) return undefined;
  let msg: unknown;
  try {
    msg = fromBinary(schema, event.value);
  } catch {
    return undefined;
  }
  let desc: DescMessage | undefined = schema;
  let cur: unknown = msg;
  for (let i = 0; i < path.length; i++) {
    if (cur === null || typeof cur !== "object") return undefined;
    const part = path[i];
    if (desc) {
      const field: DescField | undefined = desc.fields.find((f) =>
        f.name === part || f.jsonName === part
      );
      if (!field) return undefined;
      cur = (cur as Record<string, unknown>)[field.localName];
      if (field.fieldKind === "map") {
        const key = path.slice(i + 1).join(".");
        const v = (cur as Record<string, unknown>)[key];
        return v === undefined ? undefined : String(v);
      }
      desc = field.fieldKind === "message" ? field.message : undefined;
    } else {
      return undefined;
    }
  }
  if (cur === undefined || cur === null || typeof cur === "object") return undefined;
  return String(cur);
}
