//go:build !linux

package callnet

// Available reports why per-call networks cannot be made on this host.
func Available() string { return "per-call networks need Linux (network namespaces, veth, nftables)" }

// ReapTable does nothing off Linux.
func ReapTable(string) error { return nil }
