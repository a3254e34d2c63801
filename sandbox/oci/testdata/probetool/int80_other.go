//go:build !amd64

package main

func int80(uintptr) uintptr { return 0 }

const hasInt80 = false
