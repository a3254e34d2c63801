//go:build !linux

package callio

const noFollow = 0
