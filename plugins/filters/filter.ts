/**
 * Filters over objects, as containerd's `filters` package: every List of the API takes a list
 * of filter strings, parsed with {@link parseAll} and matched against each object through an
 * {@link Adaptor} that maps field paths to values.
 *
 * ```ts
 * const filter = parseAll(['name==foo,labels."com.example/key"', "name~=^bar"]);
 * const keep = images.filter((i) =>
 *   filter.match(objectAdaptor({ fields: { name: i.name }, labels: i.labels }))
 * );
 * ```
 *
 * @module
 */

import { invalidArgument } from "../errdefs.ts";
import { type Operator, parseSelectors } from "./parser.ts";
import { quote } from "./quote.ts";
import { compileRegexp, RegexpSyntaxError } from "./regexp.ts";
import { isFieldChar } from "./scanner.ts";

export type { Operator } from "./parser.ts";

/** The value of a field of an object, and whether the object has that field. */
export interface FieldValue {
  /** The value (empty when absent). */
  readonly value: string;
  /** Whether the field is present on the object. */
  readonly present: boolean;
}

/**
 * Maps a field path (`["name"]`, `["labels", "com.example/key"]`) to the value of that field
 * of one object. Unknown paths are absent.
 */
export type Adaptor = (fieldpath: readonly string[]) => FieldValue;

/** A parsed filter. */
export interface Filter {
  /** Whether the object seen through `adaptor` matches. */
  match(adaptor: Adaptor): boolean;
}

/** The filter that matches everything (what an empty filter list means). */
export const always: Filter = Object.freeze({
  match: (_adaptor: Adaptor): boolean => true,
  toString: (): string => "",
});

/** Matches when any of its filters matches (a list of filter strings). */
export class AnyFilter implements Filter {
  /** The alternatives. */
  readonly filters: readonly Filter[];

  /** A filter matching when any of `filters` matches (none: never). */
  constructor(filters: readonly Filter[]) {
    this.filters = filters;
  }

  /** Whether any alternative matches. */
  match(adaptor: Adaptor): boolean {
    return this.filters.some((f) => f.match(adaptor));
  }

  /** The alternatives as a JSON array of filter strings. */
  toString(): string {
    return JSON.stringify(this.filters.map(String));
  }
}

/** Matches when all of its filters match (the selectors of one filter string). */
export class AllFilter implements Filter {
  /** The conditions. */
  readonly filters: readonly Filter[];

  /** A filter matching when all of `filters` match (none: always). */
  constructor(filters: readonly Filter[]) {
    this.filters = filters;
  }

  /** Whether every condition matches. */
  match(adaptor: Adaptor): boolean {
    return this.filters.every((f) => f.match(adaptor));
  }

  /** The conditions joined by ",". */
  toString(): string {
    return this.filters.map(String).join(",");
  }
}

/**
 * One selector, `<fieldpath><operator><value>`, with containerd's semantics:
 * `present` – the field is present; `==` – present and equal; `!=` – not equal (an absent
 * field has the empty value, so it matches unless the value is empty); `~=` – the regular
 * expression matches the value somewhere (absent fields match as the empty string).
 */
export class Selector implements Filter {
  /** The field path. */
  readonly fieldpath: readonly string[];
  /** The operator. */
  readonly operator: Operator;
  /** The value to compare with (empty for `present`). */
  readonly value: string;
  /** For `~=`: the compiled pattern. */
  readonly regexp: RegExp | undefined;

  /**
   * A selector; for `~=` the value is compiled (see `regexp.ts`) unless `regexp` is given.
   *
   * @throws {TainerdError} of kind InvalidArgument when the regular expression is invalid.
   */
  constructor(fieldpath: readonly string[], operator: Operator, value = "", regexp?: RegExp) {
    this.fieldpath = Object.freeze([...fieldpath]);
    this.operator = operator;
    this.value = operator === "present" ? "" : value;
    if (operator === "~=" && regexp === undefined) {
      try {
        regexp = compileRegexp(value);
      } catch (err) {
        if (!(err instanceof RegexpSyntaxError)) throw err;
        throw invalidArgument(
          `Invalid regular expression ${JSON.stringify(value)}: ${err.message}`,
        );
      }
    }
    this.regexp = operator === "~=" ? regexp : undefined;
  }

  /** Whether the object's field satisfies the selector. */
  match(adaptor: Adaptor): boolean {
    const { value, present } = adaptor(this.fieldpath);
    switch (this.operator) {
      case "present":
        return present;
      case "==":
        return present && value === this.value;
      case "!=":
        return value !== this.value;
      case "~=":
        return this.regexp?.test(value) ?? false;
    }
  }

  /** The selector in filter syntax, quoting what needs it. */
  toString(): string {
    const path = this.fieldpath.map((f) =>
      f !== "" && Array.from(f).every(isFieldChar) ? f : quote(f)
    ).join(".");
    return this.operator === "present" ? path : `${path}${this.operator}${quote(this.value)}`;
  }
}

/** A filter matching when any of `filters` matches; an empty list matches nothing. */
export function anyOf(filters: readonly Filter[]): Filter {
  return filters.length === 1 ? filters[0] : new AnyFilter(filters);
}

/** A filter matching when all of `filters` match; an empty list matches everything. */
export function allOf(filters: readonly Filter[]): Filter {
  if (filters.length === 0) return always;
  return filters.length === 1 ? filters[0] : new AllFilter(filters);
}

/**
 * Parse one filter string: selectors joined by "," that must all match. The empty (or blank)
 * string matches everything.
 *
 * @throws {TainerdError} of kind InvalidArgument, e.g.
 * `Invalid filter "name==": expected a value or quoted string but found end of input at position 6`.
 */
export function parse(filter: string): Filter {
  return allOf(
    parseSelectors(filter).map((s) => new Selector(s.fieldpath, s.operator, s.value, s.regexp)),
  );
}

/**
 * Parse a list of filter strings, as the `filters` field of containerd's List requests: the
 * object matches when any of them matches. An empty list, or one holding an empty string,
 * matches everything.
 *
 * @throws {TainerdError} of kind InvalidArgument for the first malformed filter.
 */
export function parseAll(filters: readonly string[]): Filter {
  if (filters.length === 0) return always;
  const parsed = filters.map(parse);
  return parsed.includes(always) ? always : anyOf(parsed);
}
