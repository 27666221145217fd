/**
 * The events service (`containerd.services.events.v1.Events`): Publish (in the caller's
 * namespace), Forward (an envelope as is) and Subscribe (a stream, with containerd's filters
 * on `namespace`, `topic` and `event.<field>`).
 *
 * @module
 */

import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import { EnvelopeSchema, Events } from "../../api/gen/containerd/services/events/v1/events_pb.ts";
import { namespaceRequired } from "../../server/context.ts";
import type { GrpcService, TtrpcService } from "../../server/service.ts";
import { Events as TtrpcEvents } from "../../api/gen/containerd/services/ttrpc/events/v1/events_pb.ts";
import { invalidArgument } from "../errdefs.ts";
import { absent, parseAll, present } from "../filters/mod.ts";
import { PluginType, type Registration } from "../plugin.ts";
import type { Envelope } from "./exchange.ts";
import { exchangePlugin } from "./plugin.ts";
import { eventField } from "./registry.ts";

/** The filter adaptor of an envelope. */
export function envelopeAdaptor(e: Envelope) {
  return (path: readonly string[]) => {
    if (path.length === 1 && path[0] === "namespace") return present(e.namespace);
    if (path.length === 1 && path[0] === "topic") return present(e.topic);
    if (path[0] === "event" && path.length > 1) {
      const v = eventField(e.event, path.slice(1));
      return v === undefined ? absent : present(v);
    }
    return absent;
  };
}

/** `io.containerd.grpc.v1.events`. */
export const eventsService: Registration<GrpcService & TtrpcService> = {
  type: PluginType.GRPC,
  id: "events",
  requires: [PluginType.Event],
  init: (ic) => {
    const exchange = ic.get(exchangePlugin);
    return {
      registerTtrpc(server) {
        // Shims forward their task events here, enveloped (containerd's ttrpc Events).
        server.register(TtrpcEvents, {
          forward: (req) => {
            const e = req.envelope;
            if (!e || !e.event) throw invalidArgument("Cannot forward an empty envelope");
            exchange.forward({
              timestamp: e.timestamp ? timestampDate(e.timestamp) : new Date(),
              namespace: e.namespace,
              topic: e.topic,
              event: { typeUrl: e.event.typeUrl, value: e.event.value },
            });
            return {};
          },
        });
      },
      register(router) {
        router.service(Events, {
          publish: (req, ctx) => {
            const namespace = namespaceRequired(ctx);
            if (!req.event) throw invalidArgument("Cannot publish an event without a payload");
            exchange.forward({
              timestamp: new Date(),
              namespace,
              topic: req.topic,
              event: { typeUrl: req.event.typeUrl, value: req.event.value },
            });
            return {};
          },
          forward: (req) => {
            const e = req.envelope;
            if (!e || !e.event) throw invalidArgument("Cannot forward an empty envelope");
            exchange.forward({
              timestamp: e.timestamp ? timestampDate(e.timestamp) : new Date(),
              namespace: e.namespace,
              topic: e.topic,
              event: { typeUrl: e.event.typeUrl, value: e.event.value },
            });
            return {};
          },
          async *subscribe(req, ctx) {
            const filter = parseAll(req.filters);
            for await (
              const e of exchange.subscribe((e) => filter.match(envelopeAdaptor(e)), ctx.signal)
            ) {
              yield create(EnvelopeSchema, {
                timestamp: timestampFromDate(e.timestamp),
                namespace: e.namespace,
                topic: e.topic,
                event: { typeUrl: e.event.typeUrl, value: e.event.value },
              });
            }
          },
        });
      },
    };
  },
};
