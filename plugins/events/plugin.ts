/**
 * The event exchange plugin.
 *
 * @module
 */

import { Exchange } from "./exchange.ts";
import { PluginType, type Registration } from "../plugin.ts";

/** `io.containerd.event.v1.exchange`. */
export const exchangePlugin: Registration<Exchange> = {
  type: PluginType.Event,
  id: "exchange",
  init: (ic) => new Exchange(ic.log),
};
