/**
 * Validation of identifiers (namespaces, containers, leases, snapshots keys' ids) and labels,
 * with containerd's rules.
 *
 * @module
 */

import { invalidArgument } from "./errdefs.ts";

const MAX_IDENTIFIER = 76;
const IDENTIFIER_RE = /^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$/;
const MAX_LABEL = 4096;

/**
 * Checks an identifier: 1–76 characters, alphanumerics separated by single `.`, `_` or `-`.
 * `what` names the object in the error ("namespace", "container"…).
 */
export function validateIdentifier(s: string, what = "identifier"): void {
  if (s.length === 0) throw invalidArgument(`The ${what} name must not be empty`);
  if (s.length > MAX_IDENTIFIER) {
    throw invalidArgument(
      `The ${what} name ${JSON.stringify(s)} is longer than ${MAX_IDENTIFIER} characters`,
    );
  }
  if (!IDENTIFIER_RE.test(s)) {
    throw invalidArgument(
      `The ${what} name ${
        JSON.stringify(s)
      } is invalid: it must be letters and digits, separated by single ".", "_" or "-"`,
    );
  }
}

/** Checks one label: key and value together at most 4096 bytes, key not empty. */
export function validateLabel(key: string, value: string): void {
  if (key.length === 0) throw invalidArgument("A label key must not be empty");
  const size = new TextEncoder().encode(key).length + new TextEncoder().encode(value).length;
  if (size > MAX_LABEL) {
    throw invalidArgument(
      `The label ${JSON.stringify(key)} is too long: key and value are ${size} bytes, ` +
        `more than ${MAX_LABEL}`,
    );
  }
}

/** Checks every label of a set. */
export function validateLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) validateLabel(k, v);
}
