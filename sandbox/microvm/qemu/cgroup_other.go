//go:build !linux

package qemu

import (
	"errors"
	"os"
)

type cgroupLimits struct {
	MemoryBytes int64
	Pids        int
	CPUQuotaUS  int64
	CPUWeight   int
}

const cpuPeriodUS = 100000

type vmCgroup struct{}

func newCgroup(string, cgroupLimits) (*vmCgroup, error) {
	return nil, errors.New("VMM cgroups need Linux")
}
func (c *vmCgroup) fd() (*os.File, error) { return nil, nil }
func (c *vmCgroup) add(int) error         { return nil }
func (c *vmCgroup) remove()               {}
