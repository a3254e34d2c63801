//go:build !linux

package firecracker

import "errors"

func tapExists(string) bool { return false }

func joinNetns(string) error { return errors.New("network namespaces need Linux") }
