// A stand-in for the nginx and httpd images critest runs (registry.k8s.io/e2e-test-images/
// nginx:1.14-2, httpd:2.4.39-4, gcr.io/k8s-staging-cri-tools/hostnet-nginx-<arch>): serves a
// static page on the given port, writes its pid to the given file, and logs a line naming
// itself. Built static (CGO_ENABLED=0) by bench/critest/images.ts and installed in the image
// under the upstream program's name, so `pidof nginx` finds it. Like nginx, its command line
// reads "<name>: master process ..." (the ContainerPID spec greps /proc/1/cmdline for it): it
// re-executes itself once with that argv[0].
package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	name := strings.TrimSuffix(filepath.Base(strings.Fields(os.Args[0])[0]), ":")
	if !strings.Contains(os.Args[0], "master process") {
		if exe, err := os.Executable(); err == nil {
			argv := append([]string{name + ": master process " + exe}, os.Args[1:]...)
			err = syscall.Exec(exe, argv, os.Environ())
			fmt.Fprintf(os.Stderr, "%s: re-exec: %v\n", name, err)
		}
	}
	port := "80"
	pidFile := ""
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	if len(os.Args) > 2 {
		pidFile = os.Args[2]
	}
	if pidFile != "" {
		_ = os.MkdirAll(filepath.Dir(pidFile), 0o755)
		if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		}
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "<html><body><h1>Welcome to %s!</h1></body></html>\n", name)
	})
	fmt.Printf("%s: listening on port %s\n", name, port)
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
