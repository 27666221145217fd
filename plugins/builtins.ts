/**
 * Every builtin plugin, in one explicit list — as containerd's `builtins.go`. The daemon
 * initialises them in dependency order; nothing registers itself anywhere else.
 *
 * @module
 */

import type { Registration } from "./plugin.ts";
import { contentPlugin, contentService, contentStorePlugin } from "./content/plugin.ts";
import { exchangePlugin } from "./events/plugin.ts";
import { gcSchedulerPlugin } from "./gc/plugin.ts";
import { eventsService } from "./events/service.ts";
import { healthService } from "./healthcheck/plugin.ts";
import { introspectionService } from "./introspection/plugin.ts";
import { leaseManagerPlugin, leasesService, leasesStorePlugin } from "./leases/plugin.ts";
import { metadataPlugin } from "./metadata/plugin.ts";
import { namespacesService, namespacesStorePlugin } from "./namespaces/plugin.ts";
import { versionService } from "./version/plugin.ts";
import { containersService, containersStorePlugin } from "./containers/plugin.ts";
import { imagesService, imagesStorePlugin } from "./images/plugin.ts";
import { runtimePlugin } from "./runtime/plugin.ts";
import { tasksService } from "./tasks/service.ts";
import {
  nativePlugin,
  overlayfsPlugin,
  snapshotsService,
  snapshotsStorePlugin,
} from "./snapshots/plugin.ts";
import { cgroupsMonitorPlugin } from "./metrics/plugin.ts";
import { debugPlugin } from "./debug/plugin.ts";
import { diffService, diffServicePlugin, walkingDifferPlugin } from "./diff/plugin.ts";
import { restartPlugin } from "./restart/plugin.ts";
import { criPlugin } from "./cri/plugin.ts";

/** The builtin plugins. */
export const BUILTINS: readonly Registration[] = [
  exchangePlugin,
  metadataPlugin,
  namespacesStorePlugin,
  namespacesService,
  contentPlugin,
  overlayfsPlugin,
  nativePlugin,
  leaseManagerPlugin,
  leasesStorePlugin,
  contentStorePlugin,
  contentService,
  leasesService,
  eventsService,
  versionService,
  introspectionService,
  healthService,
  gcSchedulerPlugin,
  imagesStorePlugin,
  imagesService,
  containersStorePlugin,
  containersService,
  snapshotsStorePlugin,
  snapshotsService,
  walkingDifferPlugin,
  diffServicePlugin,
  diffService,
  runtimePlugin,
  tasksService,
  cgroupsMonitorPlugin,
  debugPlugin,
  restartPlugin,
  criPlugin,
] as readonly Registration[];
