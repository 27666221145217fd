// A stand-in for registry.k8s.io/e2e-test-images/nonewprivs:1.3: installed set-user-ID root,
// it prints the effective uid it runs with (0 unless no_new_privs stopped the escalation).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
