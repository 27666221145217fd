/**
 * Type helpers over protobuf method descriptors, shared by the server's handler types and the
 * typed client.
 *
 * @module
 */

import type { DescMessage, DescMethod } from "@bufbuild/protobuf";

/**
 * The input and output schemas of a unary method descriptor type. A `GenService` method
 * gives its generated schemas; a plain `DescMethod` (untyped) gives `DescMessage` for both;
 * a streaming method gives `never`.
 */
export type UnaryIO<M> = M extends {
  methodKind: infer MK;
  input: infer I extends DescMessage;
  output: infer O extends DescMessage;
} ? [MK] extends ["unary"] ? { input: I; output: O }
  : DescMethod["methodKind"] extends MK ? { input: DescMessage; output: DescMessage }
  : never
  : never;

/** The input schema of a method descriptor type (`DescMessage` when untyped). */
export type MethodInput<M> = M extends { input: infer I extends DescMessage } ? I : DescMessage;

/** The output schema of a method descriptor type (`DescMessage` when untyped). */
export type MethodOutput<M> = M extends { output: infer O extends DescMessage } ? O : DescMessage;
