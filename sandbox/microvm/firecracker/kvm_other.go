//go:build !linux

package firecracker

import (
	"errors"
	"os"
)

func checkKVM(*os.File) error { return errors.New("KVM exists only on Linux") }
