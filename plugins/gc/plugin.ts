/**
 * The garbage collection scheduler plugin, `io.containerd.gc.v1.scheduler`: drives the
 * metadata database's collector (see `plugins/metadata/gc.ts`).
 *
 * Like containerd's, it requires only the metadata plugin, so other plugins may require it
 * (e.g. to collect synchronously with `collect()` or `scheduleAndWait()`). Its collections
 * wait until every plugin finished its init, so a store that registers its GC resource
 * types after the scheduler started (images, containers, snapshots) never finds its
 * content swept by a collection that did not know its roots.
 *
 * @module
 */

import { collectorFor } from "../metadata/gc.ts";
import { metadataPlugin } from "../metadata/plugin.ts";
import { PluginType, type Registration } from "../plugin.ts";
import {
  defaultSchedulerConfig,
  GcScheduler,
  parseGoDuration,
  type SchedulerConfig,
} from "./scheduler.ts";

/** `io.containerd.gc.v1.scheduler`. */
export const gcSchedulerPlugin: Registration<GcScheduler, SchedulerConfig> = {
  type: PluginType.GC,
  id: "scheduler",
  requires: [PluginType.Metadata],
  config: defaultSchedulerConfig,
  init: (ic) => {
    const cfg = ic.config;
    for (const key of ["schedule_delay", "startup_delay", "periodic_interval"] as const) {
      parseGoDuration(cfg[key]);
    }
    const collector = collectorFor(ic.get(metadataPlugin));
    collector.setLogger(ic.log);
    // During the daemon's plugin init, some plugin's record is always "pending" whenever a
    // timer can fire; once every record has settled, every store has registered.
    const ready = () => ic.records().every((r) => r.status !== "pending");
    const scheduler = new GcScheduler(collector, cfg, ic.log, ready);
    ic.meta.exports["PauseThreshold"] = String(scheduler.pauseThreshold);
    ic.meta.exports["DeletionThreshold"] = String(scheduler.deletionThreshold);
    ic.meta.exports["MutationThreshold"] = String(scheduler.mutationThreshold);
    ic.meta.exports["ScheduleDelay"] = cfg.schedule_delay;
    scheduler.start();
    return scheduler;
  },
};
