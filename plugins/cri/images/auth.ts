/**
 * Registry credentials from a CRI `AuthConfig`, as containerd 1.6's `ParseAuth`: an explicit
 * user name and password, else an identity token (a refresh token: empty user name), else the
 * `auth` field (base64 `user:password`). With a `server_address` the credentials only go to
 * that registry.
 *
 * @module
 */

import type { AuthConfig } from "../../../api/gen/runtime/v1/api_pb.ts";
import { invalidArgument } from "../../errdefs.ts";
import type { Credentials, CredentialsProvider } from "../../../images/remote/auth.ts";

const DOCKER_HUB_HOSTS = new Set([
  "docker.io",
  "index.docker.io",
  "registry-1.docker.io",
  "registry.hub.docker.com",
]);

/** The registry host of a `server_address` (`https://index.docker.io/v1/` → `index.docker.io`). */
export function serverHost(address: string): string {
  let s = address.trim();
  const scheme = s.indexOf("://");
  if (scheme >= 0) s = s.slice(scheme + 3);
  const slash = s.indexOf("/");
  if (slash >= 0) s = s.slice(0, slash);
  return s.toLowerCase();
}

function sameRegistry(a: string, b: string): boolean {
  if (a === b) return true;
  return DOCKER_HUB_HOSTS.has(a) && DOCKER_HUB_HOSTS.has(b);
}

/**
 * The credentials an `AuthConfig` holds, or undefined when it holds none.
 *
 * @throws {TainerdError} InvalidArgument when `auth` is not base64 `user:password`, or when
 *   only a `registry_token` is given (not supported, as in containerd 1.6).
 */
export function credentialsOf(auth: AuthConfig | undefined): Credentials | undefined {
  if (!auth) return undefined;
  if (auth.username !== "") return { username: auth.username, secret: auth.password };
  if (auth.identityToken !== "") return { username: "", secret: auth.identityToken };
  if (auth.auth !== "") {
    let decoded: string;
    try {
      decoded = new TextDecoder("utf-8", { fatal: true }).decode(
        Uint8Array.from(atob(auth.auth.trim()), (c) => c.charCodeAt(0)),
      );
    } catch {
      throw invalidArgument("Invalid auth config: the auth field is not valid base64");
    }
    const i = decoded.indexOf(":");
    if (i < 0) {
      throw invalidArgument('Invalid auth config: the auth field is not base64 "user:password"');
    }
    return { username: decoded.slice(0, i), secret: decoded.slice(i + 1).replace(/\0+$/, "") };
  }
  if (auth.registryToken !== "") {
    throw invalidArgument(
      "Invalid auth config: registry_token is not supported; use username/password or identity_token",
    );
  }
  return undefined;
}

/**
 * A credentials provider for a pull from an `AuthConfig` (undefined when it holds none): the
 * credentials for every host, or only for the host of `server_address` when one is given.
 *
 * @throws {TainerdError} InvalidArgument as {@link credentialsOf}.
 */
export function credentialsProvider(auth: AuthConfig | undefined): CredentialsProvider | undefined {
  const creds = credentialsOf(auth);
  if (!creds) return undefined;
  const only = auth!.serverAddress !== "" ? serverHost(auth!.serverAddress) : undefined;
  return (host) => only === undefined || sameRegistry(only, host.toLowerCase()) ? creds : undefined;
}
