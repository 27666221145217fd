/**
 * The version service (`containerd.services.version.v1.Version`).
 *
 * @module
 */

import { Version } from "../../api/gen/containerd/services/version/v1/version_pb.ts";
import type { GrpcService } from "../../server/service.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { revisionOf, VERSION } from "../../version.ts";

/** `io.containerd.grpc.v1.version`. */
export const versionService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "version",
  init: () => ({
    register(router) {
      router.service(Version, {
        version: () => ({ version: VERSION, revision: revisionOf() }),
      });
    },
  }),
};
