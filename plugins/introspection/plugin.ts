/**
 * The introspection service (`containerd.services.introspection.v1.Introspection`): every
 * plugin with its status, and the server's UUID, generated once and kept across restarts.
 *
 * @module
 */

import { create } from "@bufbuild/protobuf";
import {
  Introspection,
  type Plugin as PbPlugin,
  PluginSchema,
} from "../../api/gen/containerd/services/introspection/v1/introspection_pb.ts";
import { StatusSchema } from "../../api/gen/google/rpc/status_pb.ts";
import type { GrpcService } from "../../server/service.ts";
import { classify, KIND_TO_CODE } from "../../server/errors.ts";
import { internal } from "../errdefs.ts";
import { parseAll } from "../filters/mod.ts";
import { type PluginRecord, PluginType, type Registration } from "../plugin.ts";

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Reads the server UUID from `path`, creating it (atomically) on first use. */
export async function serverUuid(path: string): Promise<string> {
  try {
    const text = (await Deno.readTextFile(path)).trim();
    if (!UUID_RE.test(text)) {
      throw internal(`The server UUID file "${path}" is corrupt: ${JSON.stringify(text)}`);
    }
    return text;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  const uuid = crypto.randomUUID();
  const tmp = `${path}.${uuid}.tmp`;
  await Deno.writeTextFile(tmp, uuid, { mode: 0o644 });
  await Deno.rename(tmp, path);
  return uuid;
}

function toPb(r: PluginRecord): PbPlugin {
  const reg = r.registration;
  const p = create(PluginSchema, {
    type: reg.type,
    id: reg.id,
    requires: [...(reg.requires ?? [])],
    platforms: r.meta.platforms.map((p) => ({
      os: p.os,
      architecture: p.architecture,
      variant: p.variant ?? "",
    })),
    exports: r.meta.exports,
    capabilities: r.meta.capabilities,
  });
  if (r.error) {
    const e = classify(r.error);
    p.initErr = create(StatusSchema, { code: KIND_TO_CODE[e.kind], message: r.error.message });
  }
  return p;
}

/** `io.containerd.grpc.v1.introspection`. */
export const introspectionService: Registration<GrpcService> = {
  type: PluginType.GRPC,
  id: "introspection",
  init: async (ic) => {
    await Deno.mkdir(ic.root, { recursive: true, mode: 0o711 });
    const uuid = await serverUuid(`${ic.root}/uuid`);
    return {
      register(router) {
        router.service(Introspection, {
          plugins: (req) => {
            const filter = parseAll(req.filters);
            return {
              plugins: ic.records().filter((r) =>
                filter.match((path) => {
                  const v = path.length === 1
                    ? (path[0] === "type"
                      ? r.registration.type
                      : path[0] === "id"
                      ? r.registration.id
                      : "")
                    : "";
                  return { value: v, present: v !== "" };
                })
              ).map(toPb),
            };
          },
          server: () => ({ uuid }),
        });
      },
    };
  },
};
