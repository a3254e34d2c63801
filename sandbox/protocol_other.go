//go:build !linux

package sandbox

const noFollow = 0
