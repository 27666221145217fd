/**
 * containerd's filter syntax, used by every List of the API:
 * `name==foo,labels."com.example/key"~=^v1` (selectors joined by "," must all match; a list of
 * filter strings matches when any of them does).
 *
 * ```ts
 * import { objectAdaptor, parseAll } from "./plugins/filters/mod.ts";
 * const filter = parseAll(request.filters);
 * const matching = containers.filter((c) =>
 *   filter.match(objectAdaptor({ fields: { id: c.id, image: c.image }, labels: c.labels }))
 * );
 * ```
 *
 * @module
 */

export {
  type Adaptor,
  AllFilter,
  allOf,
  always,
  AnyFilter,
  anyOf,
  type FieldValue,
  type Filter,
  type Operator,
  parse,
  parseAll,
  Selector,
} from "./filter.ts";
export { absent, adaptLabels, objectAdaptor, type ObjectFields, present } from "./adaptor.ts";
export { parseSelectors, type SelectorSpec } from "./parser.ts";
export { quote } from "./quote.ts";
