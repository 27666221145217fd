// Command client is a test client for the tainerd CRI streaming server. It drives the server
// with client-go's real remotecommand executors (SPDY, WebSocket, fallback) and port forwarder
// (SPDY, SPDY over WebSocket), the same code crictl and kubectl use.
//
// Usage:
//
//	client exec -transport spdy|websocket|fallback -url URL [-stdin] [-tty] [-resize WxH]
//	client portforward -transport spdy|websocket -url URL -port N
//
// exec streams its own stdin/stdout/stderr; a non-zero remote exit code becomes this
// process's exit code (and "exit code N" on stderr). portforward forwards a local port,
// connects to it, sends its own stdin, half-closes, and copies what comes back to stdout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
)

type sizeQueue struct {
	sizes []remotecommand.TerminalSize
	done  chan struct{}
}

func (q *sizeQueue) Next() *remotecommand.TerminalSize {
	if len(q.sizes) > 0 {
		s := q.sizes[0]
		q.sizes = q.sizes[1:]
		return &s
	}
	<-q.done
	return nil
}

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(100)
}

func main() {
	if len(os.Args) < 2 {
		die("usage: client exec|portforward ...")
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	transport := fs.String("transport", "spdy", "spdy, websocket or fallback")
	rawURL := fs.String("url", "", "streaming URL")
	stdin := fs.Bool("stdin", false, "attach stdin")
	tty := fs.Bool("tty", false, "tty mode (no stderr)")
	resize := fs.String("resize", "", "send one terminal size WxH")
	port := fs.Int("port", 0, "remote port to forward")
	_ = fs.Parse(os.Args[2:])
	u, err := url.Parse(*rawURL)
	if err != nil || *rawURL == "" {
		die("bad -url: %v", err)
	}
	config := &rest.Config{}
	switch os.Args[1] {
	case "exec":
		os.Exit(runExec(config, u, *transport, *stdin, *tty, *resize))
	case "portforward":
		os.Exit(runPortForward(config, u, *transport, *port))
	default:
		die("unknown command %q", os.Args[1])
	}
}

func runExec(config *rest.Config, u *url.URL, transport string, stdin, tty bool, resize string) int {
	var executor remotecommand.Executor
	var err error
	switch transport {
	case "spdy":
		executor, err = remotecommand.NewSPDYExecutor(config, "POST", u)
	case "websocket":
		executor, err = remotecommand.NewWebSocketExecutor(config, "GET", u.String())
	case "fallback":
		var ws, sp remotecommand.Executor
		ws, err = remotecommand.NewWebSocketExecutor(config, "GET", u.String())
		if err == nil {
			sp, err = remotecommand.NewSPDYExecutor(config, "POST", u)
		}
		if err == nil {
			executor, err = remotecommand.NewFallbackExecutor(ws, sp, func(err error) bool {
				return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
			})
		}
	default:
		die("unknown transport %q", transport)
	}
	if err != nil {
		die("executor: %v", err)
	}
	opts := remotecommand.StreamOptions{Stdout: os.Stdout, Tty: tty}
	if stdin {
		opts.Stdin = os.Stdin
	}
	if !tty {
		opts.Stderr = os.Stderr
	}
	done := make(chan struct{})
	defer close(done)
	if tty {
		q := &sizeQueue{done: done}
		if resize != "" {
			w, h, ok := strings.Cut(resize, "x")
			wi, _ := strconv.Atoi(w)
			hi, _ := strconv.Atoi(h)
			if !ok || wi <= 0 || hi <= 0 {
				die("bad -resize %q", resize)
			}
			q.sizes = append(q.sizes, remotecommand.TerminalSize{Width: uint16(wi), Height: uint16(hi)})
		}
		opts.TerminalSizeQueue = q
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = executor.StreamWithContext(ctx, opts)
	if err != nil {
		var exitErr exec.CodeExitError
		if errors.As(err, &exitErr) {
			fmt.Fprintf(os.Stderr, "exit code %d\n", exitErr.Code)
			return exitErr.Code
		}
		fmt.Fprintf(os.Stderr, "stream error: %v\n", err)
		return 101
	}
	return 0
}

func runPortForward(config *rest.Config, u *url.URL, transport string, port int) int {
	var dialer httpstream.Dialer
	switch transport {
	case "spdy":
		tr, upgrader, err := spdy.RoundTripperFor(config)
		if err != nil {
			die("round tripper: %v", err)
		}
		dialer = spdy.NewDialer(upgrader, &http.Client{Transport: tr}, "POST", u)
	case "websocket":
		d, err := portforward.NewSPDYOverWebsocketDialer(u, config)
		if err != nil {
			die("dialer: %v", err)
		}
		dialer = d
	default:
		die("unknown transport %q", transport)
	}
	stop := make(chan struct{})
	ready := make(chan struct{})
	pf, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, os.Stderr)
	if err != nil {
		die("port forwarder: %v", err)
	}
	errCh := make(chan error, 1)
	go func() { errCh <- pf.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-errCh:
		fmt.Fprintf(os.Stderr, "forward error: %v\n", err)
		return 102
	case <-time.After(30 * time.Second):
		die("timeout waiting for port forward")
	}
	ports, err := pf.GetPorts()
	if err != nil || len(ports) != 1 {
		die("ports: %v", err)
	}
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local))
	if err != nil {
		die("dial: %v", err)
	}
	go func() {
		_, _ = io.Copy(conn, os.Stdin)
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(os.Stdout, conn); err != nil {
		fmt.Fprintf(os.Stderr, "read: %v\n", err)
		return 103
	}
	conn.Close()
	close(stop)
	select {
	case <-errCh:
	case <-time.After(5 * time.Second):
	}
	return 0
}
