//go:build !linux

package main

import "log"

func epollBlast(string, int, int, []byte) (int, int) { log.Fatal("-epoll: Linux only"); return 0, 0 }

func rawPost(string, string, []byte) []byte { return nil }
