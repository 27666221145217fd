/**
 * Image references (`[domain/]path[:tag][@digest]`), parsed and normalised as docker's
 * `reference` package (the one containerd vendors as `reference/docker`): `busybox` is
 * `docker.io/library/busybox:latest`, `user/img` is `docker.io/user/img:latest`, a first
 * component with a `.` or `:` (or `localhost`) is a registry domain. Bracketed IPv6 domains
 * (`[::1]:5000/x`) are accepted, as newer versions of the grammar do.
 *
 * Every failure is an InvalidArgument {@link TainerdError} whose message names the reference
 * and the rule it breaks.
 *
 * @module
 */

import { invalidArgument, TainerdError } from "../../plugins/errdefs.ts";
import { parseDigest } from "../../plugins/content/digest.ts";

/** The registry a reference without a domain points to. */
export const DEFAULT_DOMAIN = "docker.io";
/** The legacy name of {@link DEFAULT_DOMAIN}, rewritten to it when parsing. */
export const LEGACY_DEFAULT_DOMAIN = "index.docker.io";
/** The namespace of official images on {@link DEFAULT_DOMAIN} (`busybox` → `library/busybox`). */
export const OFFICIAL_REPO_PREFIX = "library";
/** The tag added to a reference naming neither a tag nor a digest. */
export const DEFAULT_TAG = "latest";
/** The longest repository name (domain and path) allowed, in characters. */
export const NAME_TOTAL_LENGTH_MAX = 255;

// Longer inputs are refused before any regular expression sees them.
const INPUT_LENGTH_MAX = 2048;

const ALPHA_NUMERIC = "[a-z0-9]+";
const SEPARATOR = "(?:[._]|__|[-]+)";
const PATH_COMPONENT = `${ALPHA_NUMERIC}(?:${SEPARATOR}${ALPHA_NUMERIC})*`;
const DOMAIN_NAME_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const DOMAIN_NAME = `${DOMAIN_NAME_COMPONENT}(?:\\.${DOMAIN_NAME_COMPONENT})*`;
const IPV6_ADDRESS = "\\[(?:[a-fA-F0-9:]+)\\]";
const DOMAIN = `(?:${DOMAIN_NAME}|${IPV6_ADDRESS})(?::[0-9]+)?`;
const TAG = "[\\w][\\w.-]{0,127}";
const DIGEST = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
const PATH = `${PATH_COMPONENT}(?:/${PATH_COMPONENT})*`;
const NAME = `(?:${DOMAIN}/)?${PATH}`;

const REFERENCE_RE = new RegExp(`^(${NAME})(?::(${TAG}))?(?:@(${DIGEST}))?$`);
const ANCHORED_NAME_RE = new RegExp(`^(?:(${DOMAIN})/)?(${PATH})$`);
const ANCHORED_TAG_RE = new RegExp(`^${TAG}$`);
const ANCHORED_DIGEST_RE = new RegExp(`^${DIGEST}$`);
const ANCHORED_DOMAIN_RE = new RegExp(`^${DOMAIN}$`);
const ANCHORED_PATH_COMPONENT_RE = new RegExp(`^${PATH_COMPONENT}$`);
const IDENTIFIER_RE = /^[a-f0-9]{64}$/;

function quote(value: string): string {
  const shown = value.length > 160 ? `${value.slice(0, 160)}…` : value;
  return JSON.stringify(shown);
}

function invalid(input: string, reason: string): TainerdError {
  return invalidArgument(`Invalid reference ${quote(input)}: ${reason}`);
}

/** The parts of a reference, as plain data. */
export interface ReferenceParts {
  /** The registry domain, e.g. `docker.io`, `host:5000`, `[::1]:5000`. */
  readonly domain: string;
  /** The repository path within the registry, e.g. `library/busybox`. */
  readonly path: string;
  /** The tag, when one is given. */
  readonly tag?: string;
  /** The digest, when one is given. */
  readonly digest?: string;
}

/** A parsed, validated image reference. Immutable. */
export class Reference implements ReferenceParts {
  /** The registry domain (`docker.io`, `host:5000`, `[::1]:5000`); never empty once normalised. */
  readonly domain: string;
  /** The repository path (`library/busybox`). */
  readonly path: string;
  /** The tag, when one is given. */
  readonly tag?: string;
  /** The digest (`sha256:…`), when one is given. */
  readonly digest?: string;

  /**
   * Builds a reference from parts, validating each one.
   *
   * @throws {TainerdError} InvalidArgument when a part is malformed.
   */
  constructor(parts: ReferenceParts) {
    const name = parts.domain ? `${parts.domain}/${parts.path}` : parts.path;
    if (parts.domain && !ANCHORED_DOMAIN_RE.test(parts.domain)) {
      throw invalid(name, `invalid registry domain ${quote(parts.domain)}`);
    }
    const components = parts.path.split("/");
    if (parts.path === "" || !components.every((c) => ANCHORED_PATH_COMPONENT_RE.test(c))) {
      throw invalid(name, describePathProblem(parts.path));
    }
    if (name.length > NAME_TOTAL_LENGTH_MAX) {
      throw invalid(
        name,
        `repository name must not be more than ${NAME_TOTAL_LENGTH_MAX} characters`,
      );
    }
    if (parts.tag !== undefined) checkTag(name, parts.tag);
    if (parts.digest !== undefined) checkDigest(name, parts.digest);
    this.domain = parts.domain;
    this.path = parts.path;
    if (parts.tag !== undefined) this.tag = parts.tag;
    if (parts.digest !== undefined) this.digest = parts.digest;
    Object.freeze(this);
  }

  /** The repository name with its domain: `docker.io/library/busybox`. */
  get name(): string {
    return this.domain ? `${this.domain}/${this.path}` : this.path;
  }

  /**
   * What the reference points to within its repository, as containerd's `reference.Spec`
   * object: `tag`, `tag@digest`, `@digest`, or `""`.
   */
  get object(): string {
    if (this.tag !== undefined && this.digest !== undefined) return `${this.tag}@${this.digest}`;
    if (this.tag !== undefined) return this.tag;
    if (this.digest !== undefined) return `@${this.digest}`;
    return "";
  }

  /** The full reference: `docker.io/library/busybox:latest`, `host/x@sha256:…`. */
  toString(): string {
    let s = this.name;
    if (this.tag !== undefined) s += `:${this.tag}`;
    if (this.digest !== undefined) s += `@${this.digest}`;
    return s;
  }

  /** The JSON form is the string form. */
  toJSON(): string {
    return this.toString();
  }

  /** The name as docker shows it: `busybox`, `user/img`, `host:5000/img`. */
  familiarName(): string {
    if (this.domain !== DEFAULT_DOMAIN) return this.name;
    const parts = this.path.split("/");
    if (parts.length === 2 && parts[0] === OFFICIAL_REPO_PREFIX) return parts[1];
    return this.path;
  }

  /** The whole reference as docker shows it: `busybox:latest`, `user/img@sha256:…`. */
  familiarString(): string {
    let s = this.familiarName();
    if (this.tag !== undefined) s += `:${this.tag}`;
    if (this.digest !== undefined) s += `@${this.digest}`;
    return s;
  }

  /** The same repository with another tag (the digest, if any, is kept). */
  withTag(tag: string): Reference {
    return new Reference({ domain: this.domain, path: this.path, tag, digest: this.digest });
  }

  /** The same repository with another digest (the tag, if any, is kept). */
  withDigest(digest: string): Reference {
    return new Reference({ domain: this.domain, path: this.path, tag: this.tag, digest });
  }

  /** The repository alone, without tag or digest. */
  repository(): Reference {
    return new Reference({ domain: this.domain, path: this.path });
  }

  /**
   * The reference as containerd's `ParseDockerRef` returns it: a reference with both a tag and
   * a digest keeps only the digest; one with neither gets the `latest` tag.
   */
  dockerRef(): Reference {
    if (this.digest !== undefined) {
      return new Reference({ domain: this.domain, path: this.path, digest: this.digest });
    }
    if (this.tag === undefined) return this.withTag(DEFAULT_TAG);
    return this;
  }
}

function describePathProblem(path: string): string {
  if (path === "") return "repository name must have at least one component";
  if (path.toLowerCase() !== path && isValidPath(path.toLowerCase())) {
    return "repository name must be lowercase";
  }
  for (const component of path.split("/")) {
    if (component === "") return "repository name has an empty path component";
    if (!ANCHORED_PATH_COMPONENT_RE.test(component)) {
      return `invalid repository path component ${quote(component)}: components are ` +
        `lowercase letters and digits, separated by one ".", one or two "_", or dashes`;
    }
  }
  return "invalid reference format";
}

function isValidPath(path: string): boolean {
  return path.split("/").every((c) => ANCHORED_PATH_COMPONENT_RE.test(c));
}

function checkTag(input: string, tag: string): void {
  if (!ANCHORED_TAG_RE.test(tag)) {
    throw invalid(
      input,
      `invalid tag ${quote(tag)}: a tag is 1 to 128 letters, digits, "_", "." or "-", ` +
        `not starting with "." or "-"`,
    );
  }
}

function checkDigest(input: string, digest: string): void {
  if (!ANCHORED_DIGEST_RE.test(digest)) {
    throw invalid(input, `invalid digest ${quote(digest)}: expected the form "algorithm:hex"`);
  }
  try {
    parseDigest(digest);
  } catch (err) {
    const reason = err instanceof Error ? err.message.replace(/^Invalid digest "[^"]*": /, "") : "";
    throw invalid(input, `invalid digest ${quote(digest)}: ${reason}`);
  }
}

/**
 * Explains why `s` does not match the reference grammar, checking the digest, the tag and the
 * name in turn.
 */
function diagnose(s: string): TainerdError {
  let rest = s;
  const at = rest.indexOf("@");
  if (at >= 0) {
    checkDigest(s, rest.slice(at + 1));
    rest = rest.slice(0, at);
  }
  const slash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  let name = rest;
  if (colon > slash) {
    const tag = rest.slice(colon + 1);
    name = rest.slice(0, colon);
    // "host:5000" alone (no path) is not a name with a tag: let the name check report it.
    if (slash >= 0 || !/^[0-9]+$/.test(tag)) checkTag(s, tag);
  }
  if (name === "") return invalid(s, "repository name must have at least one component");
  const firstSlash = name.indexOf("/");
  if (firstSlash > 0) {
    const domain = name.slice(0, firstSlash);
    if (looksLikeDomain(domain) && !ANCHORED_DOMAIN_RE.test(domain)) {
      return invalid(s, `invalid registry domain ${quote(domain)}`);
    }
    const path = looksLikeDomain(domain) ? name.slice(firstSlash + 1) : name;
    return invalid(s, describePathProblem(path));
  }
  return invalid(s, describePathProblem(name));
}

function looksLikeDomain(component: string): boolean {
  return /[.:]/.test(component) || component === "localhost" || component.startsWith("[");
}

function checkInput(s: unknown): string {
  if (typeof s !== "string") {
    throw invalidArgument(`Invalid reference: expected a string, got ${typeof s}`);
  }
  if (s === "") throw invalidArgument("Invalid reference: the reference is empty");
  if (s.length > INPUT_LENGTH_MAX) {
    throw invalid(s, `the reference is longer than ${INPUT_LENGTH_MAX} characters`);
  }
  return s;
}

/**
 * Parses a reference exactly as written, without normalisation (docker's `reference.Parse`):
 * `busybox` has an empty domain and no tag. Use {@link parseReference} for user input.
 *
 * @throws {TainerdError} InvalidArgument when `s` is not a valid reference.
 */
export function parseExactReference(s: string): Reference {
  checkInput(s);
  const m = REFERENCE_RE.exec(s);
  if (!m) throw diagnose(s);
  const [, name, tag, digest] = m;
  const n = ANCHORED_NAME_RE.exec(name);
  if (!n) throw diagnose(s);
  // The grammar's domain is optional, so "host:5000/x" could also split as a path; resolve
  // the ambiguity as docker does (domain only when it has a "." or ":" or is "localhost").
  let domain = n[1] ?? "";
  let path = n[2];
  if (domain && !looksLikeDomain(domain)) {
    path = `${domain}/${path}`;
    domain = "";
  }
  return new Reference({ domain, path, tag, digest });
}

/**
 * Splits a name into its registry domain and the rest, as docker's `splitDockerDomain`:
 * without a domain-like first component the domain is `docker.io`, and single-component
 * names on docker.io get the `library/` prefix.
 */
function splitDockerDomain(name: string): { domain: string; remainder: string } {
  const i = name.indexOf("/");
  let domain: string;
  let remainder: string;
  if (i === -1 || !looksLikeDomain(name.slice(0, i))) {
    domain = DEFAULT_DOMAIN;
    remainder = name;
  } else {
    domain = name.slice(0, i);
    remainder = name.slice(i + 1);
  }
  if (domain === LEGACY_DEFAULT_DOMAIN) domain = DEFAULT_DOMAIN;
  if (domain === DEFAULT_DOMAIN && !remainder.includes("/")) {
    remainder = `${OFFICIAL_REPO_PREFIX}/${remainder}`;
  }
  return { domain, remainder };
}

/**
 * Parses and normalises a reference without adding a default tag (docker's
 * `ParseNormalizedNamed`): `busybox` → `docker.io/library/busybox`.
 *
 * @throws {TainerdError} InvalidArgument when `s` is not a valid reference.
 */
export function parseNormalizedNamed(s: string): Reference {
  checkInput(s);
  if (IDENTIFIER_RE.test(s)) {
    throw invalid(s, "a repository name cannot be a 64-character hexadecimal string");
  }
  const { domain, remainder } = splitDockerDomain(s);
  const at = remainder.indexOf("@");
  const beforeDigest = at >= 0 ? remainder.slice(0, at) : remainder;
  const colon = beforeDigest.indexOf(":");
  const remoteName = colon >= 0 ? beforeDigest.slice(0, colon) : beforeDigest;
  if (remoteName.toLowerCase() !== remoteName) {
    throw invalid(s, "repository name must be lowercase");
  }
  let ref: Reference;
  try {
    ref = parseExactReference(`${domain}/${remainder}`);
  } catch (err) {
    // Report against what the user wrote, not the normalised string.
    if (err instanceof TainerdError) {
      throw invalid(s, err.message.replace(/^Invalid reference "[^"]*": /, ""));
    }
    throw err;
  }
  if (ref.domain !== domain) {
    // The first component looked like a domain but is not a valid one ("a_b.c/img").
    throw invalid(s, `invalid registry domain ${quote(domain)}`);
  }
  return ref;
}

/**
 * Parses and normalises a reference the way docker's CLI reads one, adding the `latest` tag
 * when neither a tag nor a digest is given:
 *
 * - `busybox` → `docker.io/library/busybox:latest`
 * - `user/img` → `docker.io/user/img:latest`
 * - `host:5000/img:tag`, `localhost/img`, `[::1]:5000/x` keep their domain
 * - `img@sha256:…` keeps only the digest; `img:tag@sha256:…` keeps both
 *
 * @throws {TainerdError} InvalidArgument naming the broken rule (uppercase repository, bad tag,
 *   bad digest, bad domain…).
 */
export function parseReference(s: string): Reference {
  const ref = parseNormalizedNamed(s);
  return ref.tag === undefined && ref.digest === undefined ? ref.withTag(DEFAULT_TAG) : ref;
}

/**
 * Parses a reference as containerd's `ParseDockerRef`: normalised, `latest` by default, and
 * only the digest kept when both a tag and a digest are given.
 *
 * @throws {TainerdError} InvalidArgument when `s` is not a valid reference.
 */
export function parseDockerRef(s: string): Reference {
  return parseNormalizedNamed(s).dockerRef();
}

/** Whether `s` parses with {@link parseReference} (never throws). */
export function isReference(s: string): boolean {
  try {
    parseReference(s);
    return true;
  } catch {
    return false;
  }
}

/** The familiar (docker UI) name of a reference: `docker.io/library/busybox` → `busybox`. */
export function familiarName(ref: Reference | string): string {
  return (typeof ref === "string" ? parseNormalizedNamed(ref) : ref).familiarName();
}

/** The familiar (docker UI) form of a whole reference: `busybox:latest`. */
export function familiarString(ref: Reference | string): string {
  return (typeof ref === "string" ? parseNormalizedNamed(ref) : ref).familiarString();
}
