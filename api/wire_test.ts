/**
 * Wire compatibility of tainerd's .proto files with containerd 1.6.
 *
 * The reference .proto files (from Debian's golang-github-containerd-containerd-dev) are parsed
 * by a small parser below; every message, enum and service they declare is compared with the
 * descriptors that protoc-gen-es generated from tainerd's own files: field names, numbers,
 * types (scalar, enum or fully-qualified message; repeated, map, packing), enum values, and
 * RPC methods (input, output, streaming). The reference directory is `CONTAINERD_API_REF`,
 * by default the place `.ci/run` unpacks the package to; the comparison tests are ignored
 * when it is absent. The cgroup statistics (`io.containerd.cgroups.v1/v2.Metrics`, what the
 * runc shim's Task.Stats returns) are checked the same way against containerd/cgroups' own
 * files, from Debian's golang-github-containerd-cgroups-dev, in `CGROUPS_API_REF` (by default
 * where `scripts/setup.sh` unpacks it). tainerd's CRI (`runtime.v1`, what the kubelet and crictl
 * call) is checked against Kubernetes' k8s.io/cri-api v0.37.0 `pkg/apis/runtime/v1/api.proto`,
 * in `CRI_API_REF` (by default the Go module cache, `$HOME/go/pkg/mod/k8s.io/cri-api@v0.37.0/...`).
 *
 * @module
 */

import assert from "node:assert/strict";
import { ScalarType } from "@bufbuild/protobuf";
import type { DescEnum, DescField, DescFile, DescMessage } from "@bufbuild/protobuf";

import { file_containerd_events_container } from "./gen/containerd/events/container_pb.ts";
import { file_containerd_events_content } from "./gen/containerd/events/content_pb.ts";
import { file_containerd_events_image } from "./gen/containerd/events/image_pb.ts";
import { file_containerd_events_namespace } from "./gen/containerd/events/namespace_pb.ts";
import { file_containerd_events_snapshot } from "./gen/containerd/events/snapshot_pb.ts";
import { file_containerd_events_task } from "./gen/containerd/events/task_pb.ts";
import { file_containerd_runtime_v2_runc_options_oci } from "./gen/containerd/runtime/v2/runc/options/oci_pb.ts";
import { file_containerd_runtime_v2_task_shim } from "./gen/containerd/runtime/v2/task/shim_pb.ts";
import { file_containerd_services_containers_v1_containers } from "./gen/containerd/services/containers/v1/containers_pb.ts";
import { file_containerd_services_content_v1_content } from "./gen/containerd/services/content/v1/content_pb.ts";
import { file_containerd_services_diff_v1_diff } from "./gen/containerd/services/diff/v1/diff_pb.ts";
import { file_containerd_services_events_v1_events } from "./gen/containerd/services/events/v1/events_pb.ts";
import { file_containerd_services_images_v1_images } from "./gen/containerd/services/images/v1/images_pb.ts";
import { file_containerd_services_introspection_v1_introspection } from "./gen/containerd/services/introspection/v1/introspection_pb.ts";
import { file_containerd_services_leases_v1_leases } from "./gen/containerd/services/leases/v1/leases_pb.ts";
import { file_containerd_services_namespaces_v1_namespace } from "./gen/containerd/services/namespaces/v1/namespace_pb.ts";
import { file_containerd_services_snapshots_v1_snapshots } from "./gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import { file_containerd_services_tasks_v1_tasks } from "./gen/containerd/services/tasks/v1/tasks_pb.ts";
import { file_containerd_services_ttrpc_events_v1_events } from "./gen/containerd/services/ttrpc/events/v1/events_pb.ts";
import { file_containerd_services_version_v1_version } from "./gen/containerd/services/version/v1/version_pb.ts";
import { file_containerd_types_descriptor } from "./gen/containerd/types/descriptor_pb.ts";
import { file_containerd_types_metrics } from "./gen/containerd/types/metrics_pb.ts";
import { file_containerd_types_mount } from "./gen/containerd/types/mount_pb.ts";
import { file_containerd_types_platform } from "./gen/containerd/types/platform_pb.ts";
import { file_containerd_types_task_task } from "./gen/containerd/types/task/task_pb.ts";
import { file_io_containerd_cgroups_v1_metrics } from "./gen/io/containerd/cgroups/v1/metrics_pb.ts";
import { file_io_containerd_cgroups_v2_metrics } from "./gen/io/containerd/cgroups/v2/metrics_pb.ts";
import { file_runtime_v1_api } from "./gen/runtime/v1/api_pb.ts";

/** Where containerd's source tree (with its .proto files) is unpacked. */
const REF_DIR = Deno.env.get("CONTAINERD_API_REF") ??
  "/tmp/ref/x/usr/share/gocode/src/github.com/containerd/containerd";

/** Each of tainerd's files, with the reference file (relative to REF_DIR) it must match. */
const PAIRS: ReadonlyArray<readonly [DescFile, string]> = [
  [file_containerd_types_platform, "api/types/platform.proto"],
  [file_containerd_types_descriptor, "api/types/descriptor.proto"],
  [file_containerd_types_mount, "api/types/mount.proto"],
  [file_containerd_types_metrics, "api/types/metrics.proto"],
  [file_containerd_types_task_task, "api/types/task/task.proto"],
  [file_containerd_events_container, "api/events/container.proto"],
  [file_containerd_events_content, "api/events/content.proto"],
  [file_containerd_events_image, "api/events/image.proto"],
  [file_containerd_events_namespace, "api/events/namespace.proto"],
  [file_containerd_events_snapshot, "api/events/snapshot.proto"],
  [file_containerd_events_task, "api/events/task.proto"],
  [file_containerd_services_version_v1_version, "api/services/version/v1/version.proto"],
  [
    file_containerd_services_introspection_v1_introspection,
    "api/services/introspection/v1/introspection.proto",
  ],
  [file_containerd_services_namespaces_v1_namespace, "api/services/namespaces/v1/namespace.proto"],
  [file_containerd_services_content_v1_content, "api/services/content/v1/content.proto"],
  [file_containerd_services_leases_v1_leases, "api/services/leases/v1/leases.proto"],
  [file_containerd_services_images_v1_images, "api/services/images/v1/images.proto"],
  [file_containerd_services_snapshots_v1_snapshots, "api/services/snapshots/v1/snapshots.proto"],
  [file_containerd_services_diff_v1_diff, "api/services/diff/v1/diff.proto"],
  [
    file_containerd_services_containers_v1_containers,
    "api/services/containers/v1/containers.proto",
  ],
  [file_containerd_services_tasks_v1_tasks, "api/services/tasks/v1/tasks.proto"],
  [file_containerd_services_events_v1_events, "api/services/events/v1/events.proto"],
  [file_containerd_services_ttrpc_events_v1_events, "api/services/ttrpc/events/v1/events.proto"],
  [file_containerd_runtime_v2_task_shim, "runtime/v2/task/shim.proto"],
  [file_containerd_runtime_v2_runc_options_oci, "runtime/v2/runc/options/oci.proto"],
];

/** Where containerd/cgroups' source tree (with its stats .proto files) is unpacked. */
const CGROUPS_REF_DIR = Deno.env.get("CGROUPS_API_REF") ??
  "/var/cache/tainerd/cgroups-ref/usr/share/gocode/src/github.com/containerd/cgroups";

/** tainerd's cgroup statistics files, with their containerd/cgroups counterparts. */
const CGROUPS_PAIRS: ReadonlyArray<readonly [DescFile, string]> = [
  [file_io_containerd_cgroups_v1_metrics, "stats/v1/metrics.proto"],
  [file_io_containerd_cgroups_v2_metrics, "v2/stats/metrics.proto"],
];

/** Where k8s.io/cri-api's runtime/v1 package (with its api.proto) is. */
const CRI_REF_DIR = Deno.env.get("CRI_API_REF") ??
  `${Deno.env.get("HOME") ?? ""}/go/pkg/mod/k8s.io/cri-api@v0.37.0/pkg/apis/runtime/v1`;

/** tainerd's CRI file, with its k8s.io/cri-api counterpart. */
const CRI_PAIRS: ReadonlyArray<readonly [DescFile, string]> = [
  [file_runtime_v1_api, "api.proto"],
];

/** Each reference tree with the pairs checked against it. */
const REFERENCES = [
  { name: "containerd", dir: REF_DIR, pairs: PAIRS },
  { name: "containerd/cgroups", dir: CGROUPS_REF_DIR, pairs: CGROUPS_PAIRS },
  { name: "cri-api", dir: CRI_REF_DIR, pairs: CRI_PAIRS },
];

/** tainerd's protos that have no counterpart in containerd's tree. */
/**
 * Fields tainerd has that containerd 1.6 lacks, because a later containerd added them with the
 * same name and number (a 1.6 client never sets them; a 1.6 server ignores them).
 */
const LATER_ADDITIONS = new Set([
  // containerd 2.1: commit an active snapshot prepared without a parent onto `parent` (rebase).
  "field containerd.services.snapshots.v1.CommitSnapshotRequest.parent: not in the reference",
]);

const WITHOUT_REFERENCE = new Set(["google/rpc/status.proto", "grpc/health/v1/health.proto"]);

/** Types the reference imports from outside containerd's tree. */
const EXTERNAL_MESSAGES = [
  "google.protobuf.Any",
  "google.protobuf.Empty",
  "google.protobuf.FieldMask",
  "google.protobuf.Timestamp",
  "google.protobuf.Duration",
  "google.rpc.Status",
];

const SCALARS = new Set([
  "double",
  "float",
  "int32",
  "int64",
  "uint32",
  "uint64",
  "sint32",
  "sint64",
  "fixed32",
  "fixed64",
  "sfixed32",
  "sfixed64",
  "bool",
  "string",
  "bytes",
]);

// ---------------------------------------------------------------------------------------------
// Shapes: what matters on the wire, keyed by fully-qualified names.

/** A field's wire shape: its number and a canonical type such as `repeated message a.B`. */
interface FieldShape {
  number: number;
  type: string;
}

/** One RPC method: fully-qualified input/output types and streaming flags. */
interface MethodShape {
  input: string;
  output: string;
  clientStreaming: boolean;
  serverStreaming: boolean;
}

/** Everything a .proto file contributes to the wire. */
interface FileShape {
  pkg: string;
  messages: Map<string, Map<string, FieldShape>>;
  enums: Map<string, Map<string, number>>;
  services: Map<string, Map<string, MethodShape>>;
}

/** Marks repeated numeric scalars with their encoding, which differs packed and unpacked. */
function packing(scalar: string, packed: boolean): string {
  return scalar === "string" || scalar === "bytes" ? "" : packed ? " [packed]" : " [unpacked]";
}

// ---------------------------------------------------------------------------------------------
// Shapes of the generated descriptors.

function scalarName(t: ScalarType): string {
  return ScalarType[t].toLowerCase();
}

function generatedFieldType(f: DescField): string {
  switch (f.fieldKind) {
    case "scalar":
      return (f.proto.proto3Optional ? "optional " : "") + scalarName(f.scalar);
    case "enum":
      return (f.proto.proto3Optional ? "optional " : "") + `enum ${f.enum.typeName}`;
    case "message":
      return `message ${f.message.typeName}`;
    case "list":
      switch (f.listKind) {
        case "scalar":
          return `repeated ${scalarName(f.scalar)}${packing(scalarName(f.scalar), f.packed)}`;
        case "enum":
          return `repeated enum ${f.enum.typeName}${packing("enum", f.packed)}`;
        case "message":
          return `repeated message ${f.message.typeName}`;
      }
      break;
    case "map": {
      const key = scalarName(f.mapKey);
      switch (f.mapKind) {
        case "scalar":
          return `map<${key}, ${scalarName(f.scalar)}>`;
        case "enum":
          return `map<${key}, enum ${f.enum.typeName}>`;
        case "message":
          return `map<${key}, message ${f.message.typeName}>`;
      }
    }
  }
  throw new Error(`Cannot describe field ${(f as DescField).name}`);
}

/** The wire shape of a generated file descriptor. */
function generatedShape(file: DescFile): FileShape {
  const shape: FileShape = {
    pkg: file.proto.package,
    messages: new Map(),
    enums: new Map(),
    services: new Map(),
  };
  const addEnum = (e: DescEnum) => {
    shape.enums.set(e.typeName, new Map(e.values.map((v) => [v.name, v.number])));
  };
  const addMessage = (m: DescMessage) => {
    const fields = new Map<string, FieldShape>();
    for (const f of m.fields) fields.set(f.name, { number: f.number, type: generatedFieldType(f) });
    shape.messages.set(m.typeName, fields);
    m.nestedEnums.forEach(addEnum);
    m.nestedMessages.forEach(addMessage);
  };
  file.enums.forEach(addEnum);
  file.messages.forEach(addMessage);
  for (const s of file.services) {
    const methods = new Map<string, MethodShape>();
    for (const m of s.methods) {
      methods.set(m.name, {
        input: m.input.typeName,
        output: m.output.typeName,
        clientStreaming: m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming",
        serverStreaming: m.methodKind === "server_streaming" || m.methodKind === "bidi_streaming",
      });
    }
    shape.services.set(s.typeName, methods);
  }
  return shape;
}

// ---------------------------------------------------------------------------------------------
// A parser for the reference .proto files (proto3, the constructs containerd uses).

interface RawField {
  name: string;
  number: number;
  label: "" | "repeated" | "optional";
  type: string;
  keyType?: string;
  options: string;
}

interface RawMessage {
  fullName: string;
  fields: RawField[];
}

interface RawMethod {
  name: string;
  input: string;
  output: string;
  clientStreaming: boolean;
  serverStreaming: boolean;
}

/** A parsed file whose type references are not resolved yet. */
interface RawFile {
  path: string;
  pkg: string;
  messages: RawMessage[];
  enums: Map<string, Map<string, number>>;
  services: Map<string, RawMethod[]>;
}

const TOKEN =
  /\s+|\/\/[^\n]*|\/\*[\s\S]*?\*\/|("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|\.?[A-Za-z_][\w.]*|-?\d[\w.+-]*|[{}()<>[\];=,:])/y;

function tokenize(text: string, path: string): string[] {
  const tokens: string[] = [];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < text.length) {
    const at = TOKEN.lastIndex;
    const m = TOKEN.exec(text);
    if (!m) throw new Error(`${path}: cannot tokenize at offset ${at}: ${text.slice(at, at + 20)}`);
    if (m[1] !== undefined) tokens.push(m[1]);
  }
  return tokens;
}

/** Parses one .proto source text into declarations with unresolved type names. */
function parseProto(text: string, path: string): RawFile {
  const tokens = tokenize(text, path);
  let pos = 0;
  const file: RawFile = { path, pkg: "", messages: [], enums: new Map(), services: new Map() };

  const fail = (what: string): never => {
    throw new Error(`${path}: ${what} (token ${pos}: "${tokens[pos] ?? "<end>"}")`);
  };
  const peek = () => tokens[pos];
  const next = () => tokens[pos++] ?? fail("unexpected end of file");
  const expect = (t: string) => {
    if (next() !== t) {
      pos--;
      fail(`expected "${t}"`);
    }
  };
  const ident = () => {
    const t = next();
    if (!/^\.?[A-Za-z_][\w.]*$/.test(t)) {
      pos--;
      fail("expected an identifier");
    }
    return t;
  };
  const int = () => {
    const t = next();
    const n = Number(t);
    if (!Number.isInteger(n)) {
      pos--;
      fail("expected an integer");
    }
    return n;
  };
  // Skips to the end of a statement, across any bracketed values; returns the skipped text.
  const skipStatement = () => {
    const start = pos;
    let depth = 0;
    for (;;) {
      const t = next();
      if (t === "{" || t === "[" || t === "(") depth++;
      else if (t === "}" || t === "]" || t === ")") depth--;
      else if (t === ";" && depth === 0) return tokens.slice(start, pos - 1).join(" ");
    }
  };
  const fieldOptions = () => {
    if (peek() !== "[") return "";
    const start = pos;
    let depth = 0;
    do {
      const t = next();
      if (t === "[") depth++;
      else if (t === "]") depth--;
    } while (depth > 0);
    return tokens.slice(start, pos).join(" ");
  };
  const qualify = (scope: string, name: string) => (scope ? `${scope}.${name}` : name);

  const parseEnum = (scope: string) => {
    const fullName = qualify(scope, ident());
    const values = new Map<string, number>();
    expect("{");
    while (peek() !== "}") {
      const t = next();
      if (t === ";") continue;
      if (t === "option" || t === "reserved") {
        skipStatement();
        continue;
      }
      pos--;
      const name = ident();
      expect("=");
      values.set(name, int());
      fieldOptions();
      expect(";");
    }
    expect("}");
    file.enums.set(fullName, values);
  };

  const parseField = (fields: RawField[]) => {
    let label: RawField["label"] = "";
    if (peek() === "repeated" || peek() === "optional") label = next() as RawField["label"];
    let type: string;
    let keyType: string | undefined;
    if (peek() === "map" && tokens[pos + 1] === "<") {
      pos += 2;
      keyType = ident();
      expect(",");
      type = ident();
      expect(">");
    } else {
      type = ident();
    }
    const name = ident();
    expect("=");
    const number = int();
    const options = fieldOptions();
    expect(";");
    fields.push({ name, number, label, type, keyType, options });
  };

  const parseMessage = (scope: string) => {
    const message: RawMessage = { fullName: qualify(scope, ident()), fields: [] };
    file.messages.push(message);
    expect("{");
    while (peek() !== "}") {
      const t = next();
      if (t === ";") continue;
      if (t === "message") parseMessage(message.fullName);
      else if (t === "enum") parseEnum(message.fullName);
      else if (t === "option" || t === "reserved") skipStatement();
      else if (t === "oneof") {
        ident();
        expect("{");
        while (peek() !== "}") {
          if (peek() === "option") {
            next();
            skipStatement();
          } else parseField(message.fields);
        }
        expect("}");
      } else if (t === "extensions" || t === "extend" || t === "group" || t === "required") {
        pos--;
        fail(`"${t}" is not supported by this parser`);
      } else {
        pos--;
        parseField(message.fields);
      }
    }
    expect("}");
  };

  const parseService = () => {
    const fullName = qualify(file.pkg, ident());
    const methods: RawMethod[] = [];
    expect("{");
    while (peek() !== "}") {
      const t = next();
      if (t === ";") continue;
      if (t === "option") {
        skipStatement();
        continue;
      }
      if (t !== "rpc") {
        pos--;
        fail("expected rpc");
      }
      const name = ident();
      const streamedType = () => {
        expect("(");
        const stream = peek() === "stream" && tokens[pos + 1] !== ")";
        if (stream) next();
        const type = ident();
        expect(")");
        return { stream, type };
      };
      const input = streamedType();
      expect("returns");
      const output = streamedType();
      if (peek() === "{") {
        next();
        while (peek() !== "}") {
          if (next() === "option") skipStatement();
        }
        expect("}");
      } else expect(";");
      methods.push({
        name,
        input: input.type,
        output: output.type,
        clientStreaming: input.stream,
        serverStreaming: output.stream,
      });
    }
    expect("}");
    file.services.set(fullName, methods);
  };

  while (pos < tokens.length) {
    const t = next();
    if (t === ";") continue;
    if (t === "syntax") {
      expect("=");
      const syntax = next();
      if (syntax !== '"proto3"') fail(`only proto3 is supported, not ${syntax}`);
      expect(";");
    } else if (t === "package") {
      file.pkg = ident();
      expect(";");
    } else if (t === "import" || t === "option") skipStatement();
    else if (t === "message") parseMessage(file.pkg);
    else if (t === "enum") parseEnum(file.pkg);
    else if (t === "service") parseService();
    else {
      pos--;
      fail("unexpected top-level token");
    }
  }
  return file;
}

type SymbolKind = "message" | "enum" | "package";

/** The symbol table of a set of parsed files, resolving names as protoc does. */
class Symbols {
  readonly #kinds = new Map<string, SymbolKind>();

  constructor(files: readonly RawFile[], externalMessages: readonly string[] = EXTERNAL_MESSAGES) {
    const addPackage = (pkg: string) => {
      const parts = pkg.split(".");
      for (let i = 1; i <= parts.length; i++) {
        const name = parts.slice(0, i).join(".");
        if (!this.#kinds.has(name)) this.#kinds.set(name, "package");
      }
    };
    for (const name of externalMessages) {
      addPackage(name.slice(0, name.lastIndexOf(".")));
      this.#kinds.set(name, "message");
    }
    for (const f of files) {
      if (f.pkg) addPackage(f.pkg);
      for (const m of f.messages) this.#kinds.set(m.fullName, "message");
      for (const e of f.enums.keys()) this.#kinds.set(e, "enum");
    }
  }

  /** Resolves `name` as written inside `scope` to `message a.b.C` or `enum a.b.E`. */
  resolve(name: string, scope: string): string {
    const found = (full: string) => {
      const kind = this.#kinds.get(full);
      if (kind === "message" || kind === "enum") return `${kind} ${full}`;
      throw new Error(`Type "${name}" in ${scope} resolves to "${full}", which is no type`);
    };
    if (name.startsWith(".")) return found(name.slice(1));
    const first = name.split(".")[0];
    let s = scope;
    for (;;) {
      const candidate = s ? `${s}.${first}` : first;
      if (this.#kinds.has(candidate)) return found(s ? `${s}.${name}` : name);
      if (!s) break;
      const dot = s.lastIndexOf(".");
      s = dot < 0 ? "" : s.slice(0, dot);
    }
    throw new Error(`Cannot resolve type "${name}" in ${scope}`);
  }
}

/** Resolves a parsed file into its wire shape. */
function referenceShape(file: RawFile, symbols: Symbols): FileShape {
  const shape: FileShape = {
    pkg: file.pkg,
    messages: new Map(),
    enums: file.enums,
    services: new Map(),
  };
  for (const m of file.messages) {
    const fields = new Map<string, FieldShape>();
    for (const f of m.fields) {
      const value = SCALARS.has(f.type) ? f.type : symbols.resolve(f.type, m.fullName);
      let type: string;
      if (f.keyType !== undefined) type = `map<${f.keyType}, ${value}>`;
      else if (f.label === "repeated" && value.startsWith("message ")) type = `repeated ${value}`;
      else if (f.label === "repeated") {
        const packed = !/\bpacked\s*=\s*false\b/.test(f.options);
        type = `repeated ${value}${packing(SCALARS.has(value) ? value : "enum", packed)}`;
      } else type = f.label === "optional" ? `optional ${value}` : value;
      if (fields.has(f.name)) {
        throw new Error(`${file.path}: ${m.fullName}.${f.name} declared twice`);
      }
      fields.set(f.name, { number: f.number, type });
    }
    shape.messages.set(m.fullName, fields);
  }
  const messageName = (name: string) => {
    const resolved = symbols.resolve(name, file.pkg);
    if (!resolved.startsWith("message ")) throw new Error(`${file.path}: ${name} is no message`);
    return resolved.slice("message ".length);
  };
  for (const [service, methods] of file.services) {
    shape.services.set(
      service,
      new Map(methods.map((m) => [m.name, {
        input: messageName(m.input),
        output: messageName(m.output),
        clientStreaming: m.clientStreaming,
        serverStreaming: m.serverStreaming,
      }])),
    );
  }
  return shape;
}

// ---------------------------------------------------------------------------------------------
// The comparison.

function describeMethod(m: MethodShape): string {
  return `(${m.clientStreaming ? "stream " : ""}${m.input}) returns (${
    m.serverStreaming ? "stream " : ""
  }${m.output})`;
}

/** Every difference between tainerd's shape and the reference's, one line each, by name. */
function compareShapes(ours: FileShape, ref: FileShape): string[] {
  const out: string[] = [];
  if (ours.pkg !== ref.pkg) out.push(`package is ${ours.pkg}, reference has ${ref.pkg}`);

  const both = <V>(
    kind: string,
    a: Map<string, V>,
    b: Map<string, V>,
    each: (name: string, x: V, y: V) => void,
  ) => {
    for (const name of b.keys()) if (!a.has(name)) out.push(`${kind} ${name}: missing`);
    for (const name of a.keys()) {
      if (!b.has(name)) out.push(`${kind} ${name}: not in the reference`);
    }
    for (const [name, x] of a) {
      const y = b.get(name);
      if (y !== undefined) each(name, x, y);
    }
  };

  both("message", ours.messages, ref.messages, (msg, a, b) => {
    for (const name of b.keys()) if (!a.has(name)) out.push(`field ${msg}.${name}: missing`);
    for (const name of a.keys()) {
      if (!b.has(name)) out.push(`field ${msg}.${name}: not in the reference`);
    }
    for (const [name, x] of a) {
      const y = b.get(name);
      if (!y) continue;
      if (x.number !== y.number) {
        out.push(`field ${msg}.${name}: number is ${x.number}, reference has ${y.number}`);
      }
      if (x.type !== y.type) {
        out.push(`field ${msg}.${name}: type is ${x.type}, reference has ${y.type}`);
      }
    }
  });
  both("enum", ours.enums, ref.enums, (en, a, b) => {
    for (const name of b.keys()) if (!a.has(name)) out.push(`enum value ${en}.${name}: missing`);
    for (const [name, n] of a) {
      const m = b.get(name);
      if (m === undefined) out.push(`enum value ${en}.${name}: not in the reference`);
      else if (m !== n) out.push(`enum value ${en}.${name}: number is ${n}, reference has ${m}`);
    }
  });
  both("service", ours.services, ref.services, (svc, a, b) => {
    for (const name of b.keys()) if (!a.has(name)) out.push(`method /${svc}/${name}: missing`);
    for (const [name, x] of a) {
      const y = b.get(name);
      if (!y) out.push(`method /${svc}/${name}: not in the reference`);
      else if (describeMethod(x) !== describeMethod(y)) {
        out.push(
          `method /${svc}/${name}: is ${describeMethod(x)}, reference has ${describeMethod(y)}`,
        );
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Tests.

function isDirectory(dir: string): boolean {
  try {
    return Deno.statSync(dir).isDirectory;
  } catch {
    return false;
  }
}

const referenceCache = new Map<string, Map<string, FileShape>>();

/** Parses every reference file of `pairs` under `dir` once, resolving names across them. */
function referenceShapes(
  dir: string,
  pairs: ReadonlyArray<readonly [DescFile, string]>,
): Map<string, FileShape> {
  let shapes = referenceCache.get(dir);
  if (!shapes) {
    const raw = pairs.map(([, path]) => parseProto(Deno.readTextFileSync(`${dir}/${path}`), path));
    const symbols = new Symbols(raw);
    shapes = new Map(raw.map((f) => [f.path, referenceShape(f, symbols)]));
    referenceCache.set(dir, shapes);
  }
  return shapes;
}

function protoFilesUnder(dir: string, prefix = ""): string[] {
  const out: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    const rel = prefix + entry.name;
    if (entry.isDirectory) out.push(...protoFilesUnder(`${dir}/${entry.name}`, `${rel}/`));
    else if (entry.name.endsWith(".proto")) out.push(rel);
  }
  return out;
}

Deno.test("wire: the comparison reports every kind of mismatch by name", () => {
  const ref = parseProto(
    `syntax = "proto3";
    package containerd.types;
    import weak "gogoproto/gogo.proto";
    message Mount {
      string type = 1 [(gogoproto.customname) = "Kind"];
      bytes source = 2; /* a type mismatch */
      string target = 4; // a number mismatch
      string extra = 5;
      // "options" is left out: an extra field on tainerd's side
    }
    message Gone { enum Nested { A = 0; } }`,
    "inline/mount.proto",
  );
  const got = compareShapes(
    generatedShape(file_containerd_types_mount),
    referenceShape(ref, new Symbols([ref])),
  );
  assert.deepEqual(got.toSorted(), [
    "enum containerd.types.Gone.Nested: missing",
    "field containerd.types.Mount.extra: missing",
    "field containerd.types.Mount.options: not in the reference",
    "field containerd.types.Mount.source: type is string, reference has bytes",
    "field containerd.types.Mount.target: number is 3, reference has 4",
    "message containerd.types.Gone: missing",
  ]);

  const svc = parseProto(
    `syntax = "proto3";
    package containerd.services.version.v1;
    service Version {
      rpc Version(google.protobuf.Empty) returns (stream VersionResponse);
      rpc Other(.google.protobuf.Empty) returns (VersionResponse) { option deprecated = true; }
    }
    message VersionResponse { string version = 1; uint32 revision = 2; }`,
    "inline/version.proto",
  );
  assert.deepEqual(
    compareShapes(
      generatedShape(file_containerd_services_version_v1_version),
      referenceShape(svc, new Symbols([svc])),
    ).toSorted(),
    [
      "field containerd.services.version.v1.VersionResponse.revision: type is string, reference has uint32",
      "method /containerd.services.version.v1.Version/Other: missing",
      "method /containerd.services.version.v1.Version/Version: is (google.protobuf.Empty) returns " +
      "(containerd.services.version.v1.VersionResponse), reference has (google.protobuf.Empty) " +
      "returns (stream containerd.services.version.v1.VersionResponse)",
    ],
  );
});

Deno.test("wire: the reference parser resolves names by protobuf scoping", () => {
  const types = parseProto(
    `syntax = "proto3"; package containerd.types; message Metric {} enum Kind { K = 0; }`,
    "a.proto",
  );
  const tasks = parseProto(
    `syntax = "proto3";
    package containerd.services.tasks.v1;
    message R {
      message Metric {}
      repeated types.Metric outer = 1;
      Metric inner = 2;
      map<string, containerd.types.Kind> kinds = 3;
      repeated containerd.types.Kind packed = 4;
      repeated uint32 unpacked = 5 [packed = false];
    }`,
    "b.proto",
  );
  const shape = referenceShape(tasks, new Symbols([types, tasks]));
  assert.deepEqual(
    Object.fromEntries(shape.messages.get("containerd.services.tasks.v1.R")!),
    {
      outer: { number: 1, type: "repeated message containerd.types.Metric" },
      inner: { number: 2, type: "message containerd.services.tasks.v1.R.Metric" },
      kinds: { number: 3, type: "map<string, enum containerd.types.Kind>" },
      packed: { number: 4, type: "repeated enum containerd.types.Kind [packed]" },
      unpacked: { number: 5, type: "repeated uint32 [unpacked]" },
    },
  );
  assert.throws(() => referenceShape(tasks, new Symbols([tasks])), /Cannot resolve type/);
});

Deno.test("wire: the reference parser skips options, imports, reserved names and rpc bodies", () => {
  const ref = parseProto(
    `/* licence header */
    syntax = "proto3";
    package runtime.v1;
    option go_package = "k8s.io/cri-api/pkg/apis/runtime/v1";
    import "github.com/gogo/protobuf/gogoproto/gogo.proto";
    option (gogoproto.marshaler_all) = true;
    service RuntimeService {
    \trpc Version(VersionRequest) returns (VersionResponse) {}
      rpc Events(VersionRequest) returns (stream VersionResponse) { option (x.y) = { a: 1 }; }
    }
    message VersionRequest {
      option (gogoproto.goproto_getters) = false;
      reserved 2, 9 to 11;
      reserved "old";
      string version = 1 [(gogoproto.customname) = "V", debug_redact = true];
      oneof which { string a = 3; int64 b = 4 [deprecated=true]; }
      map<string,string> info = 5;
    }
    message VersionResponse {}
    enum E { option allow_alias = true; reserved 5; A = 0; B = 1 [(gogoproto.enumvalue_customname) = "Bee"]; }`,
    "inline/api.proto",
  );
  const shape = referenceShape(ref, new Symbols([ref]));
  assert.deepEqual(Object.fromEntries(shape.messages.get("runtime.v1.VersionRequest")!), {
    version: { number: 1, type: "string" },
    a: { number: 3, type: "string" },
    b: { number: 4, type: "int64" },
    info: { number: 5, type: "map<string, string>" },
  });
  assert.deepEqual(Object.fromEntries(shape.enums.get("runtime.v1.E")!), { A: 0, B: 1 });
  assert.deepEqual(Object.fromEntries(shape.services.get("runtime.v1.RuntimeService")!), {
    Version: {
      input: "runtime.v1.VersionRequest",
      output: "runtime.v1.VersionResponse",
      clientStreaming: false,
      serverStreaming: false,
    },
    Events: {
      input: "runtime.v1.VersionRequest",
      output: "runtime.v1.VersionResponse",
      clientStreaming: false,
      serverStreaming: true,
    },
  });
});

Deno.test("wire: every tainerd .proto file is paired with a reference file", () => {
  const onDisk = protoFilesUnder(new URL("./proto", import.meta.url).pathname)
    .filter((p) => !WITHOUT_REFERENCE.has(p)).toSorted();
  const paired = REFERENCES.flatMap((r) => r.pairs).map(([file]) => `${file.name}.proto`)
    .toSorted();
  assert.deepEqual(onDisk, paired);
});

for (const { name, dir, pairs } of REFERENCES) {
  const present = isDirectory(dir);
  for (const [file, refPath] of pairs) {
    Deno.test({
      name: `wire: ${file.name}.proto matches ${name}'s ${refPath}`,
      ignore: !present,
      fn() {
        const ref = referenceShapes(dir, pairs).get(refPath)!;
        const mismatches = compareShapes(generatedShape(file), ref)
          .filter((m) => !LATER_ADDITIONS.has(m));
        assert.deepEqual(mismatches, [], `${file.name}.proto differs from ${refPath}`);
        // Guard against a vacuous pass: something was actually compared.
        assert.ok(ref.messages.size + ref.enums.size + ref.services.size > 0);
      },
    });
  }
}
