/**
 * The CRI image service: pull, list, status, remove and filesystem usage of images for
 * kubelet, over the daemon's own API (see {@link CriImageService}).
 *
 * @module
 */

export * from "./auth.ts";
export * from "./fs_usage.ts";
export * from "./service.ts";
