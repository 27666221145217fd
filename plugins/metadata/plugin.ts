/**
 * The metadata plugin: opens the SQLite database under its root.
 *
 * @module
 */

import { MetadataDB } from "./db.ts";
import { PluginType, type Registration } from "../plugin.ts";

/** `io.containerd.metadata.v1.sqlite`: the database every namespaced store uses. */
export const metadataPlugin: Registration<MetadataDB> = {
  type: PluginType.Metadata,
  id: "sqlite",
  init: async (ic) => {
    await Deno.mkdir(ic.root, { recursive: true, mode: 0o711 });
    const db = new MetadataDB(`${ic.root}/meta.db`);
    ic.meta.exports["path"] = db.path;
    ic.meta.exports["schema"] = String(db.schemaVersion);
    return db;
  },
};
