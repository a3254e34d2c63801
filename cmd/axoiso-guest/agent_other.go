//go:build !linux

package main

import (
	"log/slog"
	"os"
)

func run() {
	slog.Error("axoiso-guest runs only as PID 1 of a Linux guest")
	os.Exit(2)
}
