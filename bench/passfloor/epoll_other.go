//go:build !linux

package main

import "log"

func epollRelay(string, string, int) { log.Fatal("-kind epoll: Linux only") }
