package main

// int80 makes syscall nr through the 32-bit x86 ABI and returns its raw result.
func int80(nr uintptr) uintptr

const hasInt80 = true
