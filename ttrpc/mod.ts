/**
 * ttrpc, containerd's lightweight RPC protocol for the daemon ↔ shim link: framing, the
 * request/response envelopes, a server and a client, and the gRPC code ↔ error kind table.
 *
 * @module
 */

export {
  Code,
  codeName,
  codeToKind,
  errorToStatus,
  KIND_TO_CODE,
  kindToCode,
  StatusError,
  type StatusLike,
  statusToError,
} from "./codes.ts";
export {
  type ByteReader,
  type ByteWriter,
  decodeHeader,
  encodeFrame,
  encodeHeader,
  Flags,
  type Frame,
  type FrameHeader,
  FrameReader,
  type FrameReaderOptions,
  FrameTooLargeError,
  FrameWriter,
  HEADER_LENGTH,
  isConnectionGone,
  MAX_MESSAGE_LENGTH,
  MessageType,
  readerFromStream,
} from "./frame.ts";
export {
  type AnyMessage,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  type KeyValue,
  type Metadata,
  metadataFromKeyValues,
  type MetadataInit,
  metadataToKeyValues,
  type Request,
  type Response,
  type Status,
} from "./messages.ts";
export type { MethodInput, MethodOutput, UnaryIO } from "./method_types.ts";
export {
  type RawHandler,
  type ServiceImpl,
  type TtrpcContext,
  TtrpcServer,
  type TtrpcServerOptions,
  type UnaryHandler,
} from "./server.ts";
export {
  type CallOptions,
  createTtrpcClient,
  TtrpcClient,
  type TtrpcClientOptions,
  type TtrpcServiceClient,
} from "./client.ts";
