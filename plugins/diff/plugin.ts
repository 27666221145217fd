/**
 * The diff plugins, as containerd's: the walking differ (`io.containerd.differ.v1.walking`),
 * the diff service that orders the differs (`io.containerd.service.v1.diff-service`, config
 * `default = ["walking"]`) and its API (`io.containerd.grpc.v1.diff`,
 * `containerd.services.diff.v1.Diff`).
 *
 * @module
 */

import { Diff } from "../../api/gen/containerd/services/diff/v1/diff_pb.ts";
import type { GrpcService } from "../../server/service.ts";
import { contentStorePlugin } from "../content/plugin.ts";
import { failedPrecondition, invalidArgument } from "../errdefs.ts";
import { hostPlatform } from "../platforms.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { diffServiceImpl } from "./service.ts";
import { type Differ, DiffService, WalkingDiffer } from "./walking.ts";

/** `io.containerd.differ.v1.walking`: applies layers and diffs mounts, any filesystem. */
export const walkingDifferPlugin: Registration<Differ> = {
  type: PluginType.Differ,
  id: "walking",
  requires: [PluginType.Metadata, PluginType.Content],
  init: (ic) => {
    ic.meta.platforms.push(hostPlatform());
    // Looked up at call time: the namespaced content store is a service plugin.
    return new WalkingDiffer(() => ic.get(contentStorePlugin), ic.log);
  },
};

/** The config of the diff service: the differs to try, in order (containerd's key). */
export interface DiffServiceConfig {
  default: string[];
}

/** `io.containerd.service.v1.diff-service`: the differs in order of preference. */
export const diffServicePlugin: Registration<DiffService, DiffServiceConfig> = {
  type: PluginType.Service,
  id: "diff-service",
  requires: [PluginType.Differ],
  config: () => ({ default: ["walking"] }),
  init: (ic) => {
    const names = ic.config.default;
    if (!Array.isArray(names) || names.some((n) => typeof n !== "string")) {
      throw invalidArgument(`plugins."${PluginType.Service}.diff-service".default must list names`);
    }
    const loaded = ic.getAll<Differ>(PluginType.Differ);
    return new DiffService(names.map((n) => {
      const d = loaded.get(n);
      if (!d) throw failedPrecondition(`The differ "${n}" is not loaded`);
      return d;
    }));
  },
};

/** `io.containerd.grpc.v1.diff`: `containerd.services.diff.v1.Diff`. */
export const diffService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "diff",
  requires: [PluginType.Service],
  init: (ic) => {
    const differ = ic.getAll<DiffService>(PluginType.Service).get(diffServicePlugin.id);
    if (!differ) throw failedPrecondition("The diff service is not loaded");
    return {
      register(router) {
        router.service(Diff, diffServiceImpl(differ));
      },
    };
  },
};
