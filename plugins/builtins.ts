/**
 * Every builtin plugin, in one explicit list — as containerd's `builtins.go`. The daemon
 * initialises them in dependency order; nothing registers itself anywhere else.
 *
 * @module
 */

import type { Registration } from "./plugin.ts";
import { exchangePlugin } from "./events/plugin.ts";
import { eventsService } from "./events/service.ts";
import { healthService } from "./healthcheck/plugin.ts";
import { introspectionService } from "./introspection/plugin.ts";
import { metadataPlugin } from "./metadata/plugin.ts";
import { namespacesService, namespacesStorePlugin } from "./namespaces/plugin.ts";
import { versionService } from "./version/plugin.ts";

/** The builtin plugins. */
export const BUILTINS: readonly Registration[] = [
  exchangePlugin,
  metadataPlugin,
  namespacesStorePlugin,
  namespacesService,
  eventsService,
  versionService,
  introspectionService,
  healthService,
] as readonly Registration[];
