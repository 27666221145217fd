/**
 * Image archives: import of OCI layouts and `docker save` tarballs, export as OCI layout with a
 * Docker `manifest.json`.
 *
 * @module
 */

export * from "./exporter.ts";
export * from "./importer.ts";
