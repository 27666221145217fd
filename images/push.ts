/**
 * Image push over the API, as containerd's `remotes.PushContent`: walk the local image
 * (platform-filtered), push every blob the registry lacks — children before their parents,
 * layers in parallel, blobs mounted from another repository of the same registry when their
 * `containerd.io/distribution.source.*` labels say they came from there — and put the root
 * manifest or index under the reference's tag last.
 *
 * @module
 */

import type { TainerdClient } from "../client/client.ts";
import { readContent } from "../client/content.ts";
import { contentInfo, contentProvider } from "../client/images_content.ts";
import { getImage } from "../client/images.ts";
import { isNotFound, notFound } from "../plugins/errdefs.ts";
import {
  childrenOf,
  type Descriptor,
  filterChildren,
  hasChildren,
  Labels,
  refKey,
} from "./image.ts";
import { allPlatforms, type Platform, platformMatcherFor } from "./platforms.ts";
import { parseReference } from "./reference/reference.ts";
import type { Pusher } from "./remote/pusher.ts";
import {
  openResolver,
  type ProgressHandler,
  type RegistryOptions,
  Semaphore,
} from "./registry_options.ts";

/** Options of {@link push}. */
export interface PushOptions extends RegistryOptions {
  /** Push only the manifests of these platforms (every platform by default). */
  platform?: string | Platform | (string | Platform)[];
  /** Blobs uploaded at once (default 3). */
  concurrency?: number;
  onProgress?: ProgressHandler;
  signal?: AbortSignal;
}

/** What {@link push} did. */
export interface PushResult {
  /** The root descriptor pushed (and tagged). */
  target: Descriptor;
  /** Every blob, children first, with what happened to it. */
  blobs: { desc: Descriptor; status: "exists" | "mounted" | "pushed" }[];
}

function stream(client: TainerdClient, digest: string, signal?: AbortSignal) {
  const it = readContent(client, digest, { signal });
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const next = await it.next();
      if (next.done) controller.close();
      else controller.enqueue(next.value);
    },
    async cancel() {
      await it.return(undefined);
    },
  });
}

/**
 * Pushes the local image `imageName` (default: `ref`, normalised) to `ref`.
 *
 * @throws {TainerdError} NotFound when the image or some of its content is missing (pull it
 *   with every platform, or push one platform); registry errors as they come.
 */
export async function push(
  client: TainerdClient,
  ref: string,
  imageName?: string,
  opts: PushOptions = {},
): Promise<PushResult> {
  const reference = parseReference(ref);
  const img = await getImage(client, imageName ?? reference.toString());
  const matcher = opts.platform === undefined ? allPlatforms : platformMatcherFor(opts);
  const provider = contentProvider(client);
  const { resolver, close } = openResolver(opts);
  try {
    const pusher = await resolver.pusher(reference);
    const limiter = new Semaphore(opts.concurrency ?? 3);
    const blobs: PushResult["blobs"] = [];
    const done = new Map<string, Promise<void>>();
    const controller = new AbortController();
    opts.signal?.addEventListener("abort", () => controller.abort(opts.signal?.reason));
    const signal = controller.signal;

    const mountFrom = async (desc: Descriptor): Promise<string[]> => {
      const info = await contentInfo(client, desc.digest);
      const repos = info?.labels[`${Labels.DistributionSource}${reference.domain}`];
      return repos ? repos.split(",").filter((r) => r && r !== reference.path) : [];
    };

    const pushOne = async (desc: Descriptor, root: boolean): Promise<void> => {
      const key = refKey(desc);
      let children: Descriptor[] = [];
      let bytes: Uint8Array | undefined;
      if (hasChildren(desc.mediaType)) {
        try {
          bytes = await provider.readBlob(desc);
        } catch (err) {
          if (isNotFound(err)) throw missing(desc, img.name);
          throw err;
        }
        children = filterChildren(desc, childrenOf(desc, bytes), matcher);
      }
      await Promise.all(children.map((c) => visit(c, false)));
      signal.throwIfAborted();
      await limiter.run(async () => {
        opts.onProgress?.({ ref: key, desc, status: "uploading", offset: 0, total: desc.size });
        if (!bytes && !(await contentInfo(client, desc.digest))) throw missing(desc, img.name);
        const result = await (pusher as Pusher).push(
          desc,
          bytes ?? (() => stream(client, desc.digest, signal)),
          {
            tag: root && reference.tag !== undefined ? reference.tag : undefined,
            mountFrom: bytes ? undefined : await mountFrom(desc),
            signal,
          },
        );
        blobs.push({ desc, status: result.status });
        opts.onProgress?.({
          ref: key,
          desc,
          status: result.status === "pushed" ? "done" : result.status,
          offset: desc.size,
          total: desc.size,
        });
      });
    };

    const visit = (desc: Descriptor, root: boolean): Promise<void> => {
      let p = done.get(desc.digest);
      if (!p) {
        p = pushOne(desc, root);
        p.catch((err) => controller.abort(err));
        done.set(desc.digest, p);
      }
      return p;
    };

    const target = img.target;
    try {
      await visit(target, true);
    } finally {
      await Promise.allSettled([...done.values()]);
    }
    return { target, blobs };
  } finally {
    close();
  }
}

function missing(desc: Descriptor, name: string): Error {
  return notFound(
    `Cannot push image "${name}": content ${desc.digest} (${desc.mediaType}) is missing; ` +
      `pull it with all platforms, or push only the platforms it has`,
  );
}
