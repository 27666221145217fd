/**
 * Test helper: a real distribution registry (Debian's `docker-registry`) on 127.0.0.1, with its
 * own config and storage in a temporary directory, optionally with TLS (and client CAs),
 * htpasswd or token auth.
 *
 * @module
 */

import { join } from "node:path";

/** Where the registry binary lives. */
export const REGISTRY_BINARY = "/usr/bin/docker-registry";

/** Options of {@link startRegistry}. */
export interface RegistryOptions {
  /** Serve HTTPS with this certificate and key (paths); require client certs from `clientCAs`. */
  tls?: { cert: string; key: string; clientCAs?: string[] };
  /** htpasswd auth with this (bcrypt) file. */
  htpasswd?: string;
  /** Token auth. */
  token?: { realm: string; service: string; issuer: string; rootCertBundle: string };
}

/** A running registry. */
export interface RunningRegistry {
  /** `127.0.0.1:<port>` */
  host: string;
  port: number;
  /** `http(s)://127.0.0.1:<port>` */
  url: string;
  /** The temporary directory holding config and storage. */
  dir: string;
  /** The storage root (`docker/registry/v2/...` below it). */
  storage: string;
  /** The registry's output so far. */
  logs(): string;
  /** Stops the registry and removes its directory. */
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

function yamlString(s: string): string {
  return JSON.stringify(s);
}

/** Starts a registry and waits until it accepts connections. */
export async function startRegistry(options: RegistryOptions = {}): Promise<RunningRegistry> {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-registry-" });
  const storage = join(dir, "storage");
  await Deno.mkdir(storage);
  const port = freePort();
  const lines = [
    "version: 0.1",
    "log:",
    "  level: warn",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${yamlString(storage)}`,
    "  delete:",
    "    enabled: true",
    "  maintenance:",
    "    uploadpurging:",
    "      enabled: false",
    "http:",
    `  addr: 127.0.0.1:${port}`,
    "  secret: tainerd-test-secret",
  ];
  if (options.tls) {
    lines.push(
      "  tls:",
      `    certificate: ${yamlString(options.tls.cert)}`,
      `    key: ${yamlString(options.tls.key)}`,
    );
    if (options.tls.clientCAs?.length) {
      lines.push("    clientcas:", ...options.tls.clientCAs.map((c) => `      - ${yamlString(c)}`));
    }
  }
  if (options.htpasswd) {
    lines.push(
      "auth:",
      "  htpasswd:",
      "    realm: tainerd-test",
      `    path: ${yamlString(options.htpasswd)}`,
    );
  } else if (options.token) {
    lines.push(
      "auth:",
      "  token:",
      `    realm: ${yamlString(options.token.realm)}`,
      `    service: ${yamlString(options.token.service)}`,
      `    issuer: ${yamlString(options.token.issuer)}`,
      `    rootcertbundle: ${yamlString(options.token.rootCertBundle)}`,
    );
  }
  const config = join(dir, "config.yml");
  await Deno.writeTextFile(config, lines.join("\n") + "\n");
  const child = new Deno.Command(REGISTRY_BINARY, {
    args: ["serve", config],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { OTEL_TRACES_EXPORTER: "none" },
  }).spawn();
  let output = "";
  const decoder = new TextDecoder();
  const drain = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) output += decoder.decode(chunk, { stream: true });
  };
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const stop = async () => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch {
        // Already gone.
      }
    }
    await status;
    await drained;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  const deadline = Date.now() + 15000;
  for (;;) {
    if (exited) {
      await stop();
      throw new Error(`docker-registry exited at start:\n${output}`);
    }
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      break;
    } catch {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`docker-registry did not start:\n${output}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    host: `127.0.0.1:${port}`,
    port,
    url: `${options.tls ? "https" : "http"}://127.0.0.1:${port}`,
    dir,
    storage,
    logs: () => output,
    stop,
  };
}

/** The path of a blob's data in a registry's storage. */
export function blobDataPath(registry: RunningRegistry, digest: string): string {
  const [alg, hex] = digest.split(":");
  return join(registry.storage, "docker/registry/v2/blobs", alg, hex.slice(0, 2), hex, "data");
}
