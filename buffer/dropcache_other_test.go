//go:build !linux

package buffer

import "os"

func dropCache(f *os.File) {}
