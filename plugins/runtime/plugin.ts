/**
 * The runtime v2 plugin (`io.containerd.runtime.v2.task`): the task manager over shims.
 *
 * @module
 */

import { exchangePlugin } from "../events/plugin.ts";
import { PluginType, type Registration } from "../plugin.ts";
import { hostPlatform } from "../platforms.ts";
import { defaultRuntimeConfig, parseRuntimeConfig, type RuntimeConfig } from "./binary.ts";
import { RuntimeManager } from "./manager.ts";

/**
 * `io.containerd.runtime.v2.task`. Config: `shims = { "<runtime>" = "<binary>" }` maps a
 * runtime name to an external shim binary (a name on PATH or an absolute path), e.g.
 * `shims = { "io.containerd.runc.v2" = "containerd-shim-runc-v2" }`.
 */
export const runtimePlugin: Registration<RuntimeManager> = {
  type: PluginType.Runtime,
  id: "task",
  requires: [PluginType.Event],
  config: defaultRuntimeConfig,
  parseConfig: parseRuntimeConfig,
  init: async (ic) => {
    ic.meta.platforms.push(hostPlatform());
    await Deno.mkdir(ic.root, { recursive: true, mode: 0o711 });
    await Deno.mkdir(ic.state, { recursive: true, mode: 0o711 });
    const manager = new RuntimeManager({
      root: ic.root,
      state: ic.state,
      daemonState: ic.daemonState,
      address: ic.address,
      ttrpcAddress: ic.ttrpcAddress,
      events: ic.get(exchangePlugin),
      log: ic.log,
      config: ic.config as RuntimeConfig,
    });
    // Reconnect to the shims of a previous daemon once the ttrpc socket they publish to is
    // up; the load itself never blocks start-up for longer than its timeouts.
    await manager.load();
    return manager;
  },
};
