// Command pause is the meshauth test cluster's pod sandbox ("pause")
// process: a Go stand-in for Kubernetes' build/pause/linux/pause.c. It holds
// the pod's namespaces open by living, reaps any child that is reparented to
// it (it is PID 1 when the pod shares its PID namespace), and exits 0 on
// SIGINT or SIGTERM. Like the C original, "-v" prints a version and exits.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "meshauth-1"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println("pause.go", version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
