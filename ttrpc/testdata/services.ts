/**
 * Test fixtures shared by the ttrpc tests: implementations of the Version and Health services
 * with behaviour steered by the request (errors, delays, deadlines), and socket helpers.
 *
 * @module
 */

import { Version } from "../../api/gen/containerd/services/version/v1/version_pb.ts";
import {
  Health,
  HealthCheckResponse_ServingStatus,
} from "../../api/gen/grpc/health/v1/health_pb.ts";
import { notFound } from "../../plugins/errdefs.ts";
import { TtrpcServer, type TtrpcServerOptions } from "../server.ts";

/** What the handlers observed, for assertions. */
export interface Observed {
  /** Abort reasons seen by `slow` health checks. */
  aborts: unknown[];
  /** Deadlines seen by handlers (epoch ms or undefined). */
  deadlines: (number | undefined)[];
}

/**
 * A server with Version (`version` = "tainerd-test", `revision` = the `x-echo` metadata
 * values joined by ",", delayed by `x-sleep` ms) and Health.Check (`missing` → NotFound,
 * `slow` → waits for its signal and rethrows the reason, `boom` → plain Error, else SERVING).
 */
export function testServer(options?: TtrpcServerOptions): {
  server: TtrpcServer;
  observed: Observed;
} {
  const observed: Observed = { aborts: [], deadlines: [] };
  const server = new TtrpcServer(options);
  server.register(Version, {
    async version(_req, ctx) {
      observed.deadlines.push(ctx.deadline);
      const sleep = Number(ctx.metadata["x-sleep"]?.[0] ?? 0);
      if (sleep > 0) await new Promise((r) => setTimeout(r, sleep));
      return { version: "tainerd-test", revision: (ctx.metadata["x-echo"] ?? []).join(",") };
    },
  });
  server.register(Health, {
    check(req, ctx) {
      switch (req.service) {
        case "missing":
          throw notFound(`Service "missing" not found`);
        case "boom":
          throw new Error("boom");
        case "slow":
          return new Promise((_resolve, reject) => {
            ctx.signal.addEventListener("abort", () => {
              observed.aborts.push(ctx.signal.reason);
              reject(ctx.signal.reason);
            });
          });
        default:
          return { status: HealthCheckResponse_ServingStatus.SERVING };
      }
    },
  });
  return { server, observed };
}

/** A fresh temp dir with a socket path inside; `cleanup` removes it. */
export async function tempSocket(): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await Deno.makeTempDir({ prefix: "ttrpc-test-" });
  return {
    path: `${dir}/ttrpc.sock`,
    cleanup: () => Deno.remove(dir, { recursive: true }),
  };
}
