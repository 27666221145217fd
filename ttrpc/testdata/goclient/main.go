// Command goclient is a real Go ttrpc peer (github.com/containerd/ttrpc v1.1.x, the version
// containerd 1.6 ships) used by tainerd's interop test. Messages are carried as raw protobuf
// bytes so no generated code is needed.
//
//	goclient client <socket>  call a tainerd ttrpc server, print "ok" or fail
//	goclient server <socket>  serve on <socket>, print "ready", exit when stdin closes
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// raw is a protobuf message carried as its encoded bytes (gogo's Marshaler/Unmarshaler).
type raw struct{ b []byte }

func (r *raw) Reset()                   { r.b = nil }
func (r *raw) String() string           { return fmt.Sprintf("%x", r.b) }
func (r *raw) ProtoMessage()            {}
func (r *raw) Marshal() ([]byte, error) { return r.b, nil }
func (r *raw) Unmarshal(b []byte) error { r.b = append([]byte(nil), b...); return nil }

// str encodes a length-delimited string field (lengths < 128 only).
func str(field int, s string) []byte {
	return append([]byte{byte(field<<3 | 2), byte(len(s))}, s...)
}

// firstString decodes field 1 when it is a short string (the only shape used here).
func firstString(b []byte) string {
	if len(b) < 2 || b[0] != 0x0a {
		return ""
	}
	return string(b[2 : 2+int(b[1])])
}

const (
	versionSvc = "containerd.services.version.v1.Version"
	healthSvc  = "grpc.health.v1.Health"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func runClient(path string) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		fail("dial: %v", err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx := context.Background()

	// 1. Unary call with metadata; the server echoes the metadata in `revision`.
	mctx := ttrpc.WithMetadata(ctx, ttrpc.MD{"x-echo": []string{"from-go"}})
	var resp raw
	if err := client.Call(mctx, versionSvc, "Version", &raw{}, &resp); err != nil {
		fail("Version: %v", err)
	}
	want := append(str(1, "tainerd-test"), str(2, "from-go")...)
	if string(resp.b) != string(want) {
		fail("Version: got %x, want %x", resp.b, want)
	}

	// 2. A handler error keeps its code and message.
	err = client.Call(ctx, healthSvc, "Check", &raw{b: str(1, "missing")}, &resp)
	if st, _ := status.FromError(err); st.Code() != codes.NotFound || st.Message() != `Service "missing" not found` {
		fail("Check(missing): got %v", err)
	}

	// 3. Unknown method -> Unimplemented.
	err = client.Call(ctx, healthSvc, "Nope", &raw{}, &resp)
	if st, _ := status.FromError(err); st.Code() != codes.Unimplemented {
		fail("Nope: got %v", err)
	}

	// 4. Concurrent calls on one connection.
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("svc-%d", i)
			var r raw
			if err := client.Call(ctx, healthSvc, "Check", &raw{b: str(1, name)}, &r); err != nil {
				errs <- err
				return
			}
			if string(r.b) != string([]byte{0x08, 0x01}) {
				errs <- fmt.Errorf("check %d: got %x", i, r.b)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fail("concurrent: %v", err)
	}

	// 5. The deadline travels as timeout_nano; the server aborts the handler and answers
	// DeadlineExceeded (or the Go client gives up first with context.DeadlineExceeded).
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	err = client.Call(tctx, healthSvc, "Check", &raw{b: str(1, "slow")}, &resp)
	if st, _ := status.FromError(err); st.Code() != codes.DeadlineExceeded && !errors.Is(err, context.DeadlineExceeded) {
		fail("slow: got %v", err)
	}
	fmt.Println("ok")
}

func runServer(path string) {
	s, err := ttrpc.NewServer()
	if err != nil {
		fail("server: %v", err)
	}
	s.Register(versionSvc, map[string]ttrpc.Method{
		"Version": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req raw
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			echo, _ := ttrpc.GetMetadataValue(ctx, "x-echo")
			return &raw{b: append(str(1, "go-ttrpc"), str(2, echo)...)}, nil
		},
	})
	s.Register(healthSvc, map[string]ttrpc.Method{
		"Check": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req raw
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			switch name := firstString(req.b); name {
			case "missing":
				return nil, status.Errorf(codes.NotFound, "Service %q not found", name)
			case "slow":
				<-ctx.Done()
				return nil, status.Errorf(codes.DeadlineExceeded, "%v", ctx.Err())
			default:
				return &raw{b: []byte{0x08, 0x01}}, nil
			}
		},
	})
	l, err := net.Listen("unix", path)
	if err != nil {
		fail("listen: %v", err)
	}
	go s.Serve(context.Background(), l)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	s.Close()
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: goclient client|server <socket>")
	}
	switch os.Args[1] {
	case "client":
		runClient(os.Args[2])
	case "server":
		runServer(os.Args[2])
	default:
		fail("unknown mode %q", os.Args[1])
	}
}
