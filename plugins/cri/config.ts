/**
 * The CRI plugin's config: `[plugins."io.containerd.grpc.v1.cri"]`, with containerd 1.6's
 * key names for everything tainerd implements.
 *
 * @module
 */

import { DEFAULT_SANDBOX_IMAGE } from "./pause/pause.ts";

/** `[plugins."io.containerd.grpc.v1.cri".cni]`. */
export interface CniConfig {
  /** Where the CNI plugin binaries are (Debian's containernetworking-plugins: /usr/lib/cni). */
  bin_dir: string;
  /** Where the network configs are. */
  conf_dir: string;
  /** How many network configs are loaded (only the first is used for pods). */
  max_conf_num: number;
}

/** `[plugins."io.containerd.grpc.v1.cri".containerd]`. */
export interface CriContainerdConfig {
  /** The snapshotter of pods and containers. */
  snapshotter: string;
  /** The runtime (shim) used when a pod names no handler. */
  default_runtime_name: string;
  /** Runtime handlers: name → runtime type. */
  runtimes: Record<string, { runtime_type: string }>;
}

/** `[plugins."io.containerd.grpc.v1.cri".registry]`. */
export interface CriRegistryConfig {
  /** A hosts.toml directory (as `images pull --hosts-dir`). */
  config_path: string;
}

/** The whole CRI section. */
export interface CriConfig {
  /** The pause image of every pod; the default is built by tainerd itself, offline. */
  sandbox_image: string;
  /** The streaming server's address (exec/attach/port-forward URLs). */
  stream_server_address: string;
  /** Its port; "0" picks a free one. */
  stream_server_port: string;
  /** How long a streaming connection may stay idle (a Go duration). */
  stream_idle_timeout: string;
  /** Longer log lines are split into partial (`P`) lines. */
  max_container_log_line_size: number;
  /** Clamp OOM score adjustments to the daemon's own. */
  restrict_oom_score_adj: boolean;
  /** Pod IPs are refreshed every N seconds in stats (kept for compatibility). */
  stats_collect_period: number;
  /** Allow unprivileged ports (sysctl net.ipv4.ip_unprivileged_port_start=0) in pods. */
  enable_unprivileged_ports: boolean;
  /** Allow unprivileged ICMP (net.ipv4.ping_group_range) in pods. */
  enable_unprivileged_icmp: boolean;
  cni: CniConfig;
  containerd: CriContainerdConfig;
  registry: CriRegistryConfig;
}

/** The default config. */
export function defaultCriConfig(): CriConfig {
  return {
    sandbox_image: DEFAULT_SANDBOX_IMAGE,
    stream_server_address: "127.0.0.1",
    stream_server_port: "0",
    stream_idle_timeout: "4h0m0s",
    max_container_log_line_size: 16 * 1024,
    restrict_oom_score_adj: false,
    stats_collect_period: 10,
    enable_unprivileged_ports: false,
    enable_unprivileged_icmp: false,
    cni: {
      bin_dir: "/usr/lib/cni",
      conf_dir: "/etc/cni/net.d",
      max_conf_num: 1,
    },
    containerd: {
      snapshotter: "overlayfs",
      default_runtime_name: "runc",
      runtimes: {
        runc: { runtime_type: "io.containerd.runc.v2" },
      },
    },
    registry: { config_path: "" },
  };
}

/** The namespace CRI objects live in, as containerd's. */
export const CRI_NAMESPACE = "k8s.io";
