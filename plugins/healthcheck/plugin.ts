/**
 * The gRPC health service (`grpc.health.v1.Health`), SERVING while the daemon runs and
 * NOT_SERVING once it starts shutting down.
 *
 * @module
 */

import {
  Health,
  HealthCheckResponse_ServingStatus as Status,
} from "../../api/gen/grpc/health/v1/health_pb.ts";
import type { GrpcService } from "../../server/service.ts";
import { notFound } from "../errdefs.ts";
import { PluginType, type Registration } from "../plugin.ts";

/** The health service's instance. */
export interface HealthService extends GrpcService {
  /** Marks the daemon as going away: checks answer NOT_SERVING. */
  shutdown(): void;
}

/** `io.containerd.grpc.v1.healthcheck`. */
export const healthService: Registration<HealthService> = {
  type: PluginType.GRPC,
  id: "healthcheck",
  init: () => {
    let serving = true;
    const waiters = new Set<() => void>();
    const status = (service: string) => {
      if (service !== "") throw notFound(`Unknown service "${service}" for health checks`);
      return serving ? Status.SERVING : Status.NOT_SERVING;
    };
    return {
      shutdown() {
        serving = false;
        for (const w of waiters) w();
      },
      register(router) {
        router.service(Health, {
          check: (req) => ({ status: status(req.service) }),
          async *watch(req, ctx) {
            let last = status(req.service);
            yield { status: last };
            while (!ctx.signal.aborted) {
              await new Promise<void>((resolve) => {
                waiters.add(resolve);
                ctx.signal.addEventListener("abort", () => resolve(), { once: true });
              });
              const now = status(req.service);
              if (now !== last) yield { status: last = now };
              if (now === Status.NOT_SERVING) return;
            }
          },
        });
      },
    };
  },
};
