/**
 * Linux access for tainerd: the FFI binding to libc (`libc.ts`), containerd-style mounts
 * (`mount.ts`), the mount table (`mountinfo.ts`) and runc's console socket
 * (`console_socket.ts`).
 *
 * @module
 */

export * from "./libc.ts";
export * from "./mount.ts";
export * from "./mountinfo.ts";
export * from "./console_socket.ts";
