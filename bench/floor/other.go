//go:build !linux

// Command floor is Linux only (epoll): see main.go.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "floor: Linux only (it runs an epoll loop)")
	os.Exit(1)
}
