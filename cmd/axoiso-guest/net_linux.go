package main

import (
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/axocoatl/isolation/internal/guest"
)

// The VM's NIC. A VM gets one only when its call has a network policy (the host then loads
// virtio_net through axocoatl.modules); it stays down and unaddressed until the request says how
// to configure it, so a pooled VM sends nothing before its call. The host's rules, not the guest,
// enforce the policy: this only makes the guest's traffic go where the host expects it.

// nicName is the guest's only NIC (virtio_net names the first one eth0).
const nicName = "eth0"

// resolvConf is the file the agent binds over /etc/resolv.conf of the guest's root (and, for a
// tool on an image, of the image's): the call's resolver.
const resolvConf = "/etc/resolv.conf"

// disableIPv6ByDefault keeps IPv6 off every link created from now on (eth0, once virtio_net is
// loaded); lo keeps ::1. The host rejects IPv6 from a VM anyway: this only keeps the guest from
// sending router solicitations and duplicate address probes.
func disableIPv6ByDefault() error {
	return os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0)
}

// netDone is the configuration the NIC got (nil: none yet).
var netDone *guest.Net

// configureNetOnce configures the NIC with n unless it has n already (a pooled VM configured it
// when it was warmed, its call's request carries the same); another configuration is refused.
func configureNetOnce(n *guest.Net) error {
	if netDone != nil {
		if *netDone != *n {
			return fmt.Errorf("net: the NIC is configured for %s already, not %s", netDone.Addr, n.Addr)
		}
		return nil
	}
	if err := configureNet(n); err != nil {
		return err
	}
	c := *n
	netDone = &c
	return nil
}

// configureNet gives eth0 the call's address and default route and binds a resolv.conf naming
// the call's resolver over the root's.
func configureNet(n *guest.Net) error {
	addr, gw, dns, err := n.Check()
	if err != nil {
		return err
	}
	eth, err := netlink.LinkByName(nicName)
	if err != nil {
		return fmt.Errorf("net: %s: %w (no virtio_net?)", nicName, err)
	}
	ipn := &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(n.PrefixLen, 32)}
	if err := netlink.AddrAdd(eth, &netlink.Addr{IPNet: ipn}); err != nil {
		return fmt.Errorf("net: address %s: %w", ipn, err)
	}
	if err := netlink.LinkSetUp(eth); err != nil {
		return fmt.Errorf("net: up: %w", err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("net: default route via %s: %w", gw, err)
	}
	return bindResolvConf("nameserver " + dns.String() + "\noptions timeout:2 attempts:2\n")
}

// resolvDir holds the call's resolv.conf: root's, closed to the tool (which may see its name in
// /tmp but neither enter nor, /tmp being sticky, remove it). The file keeps its name: a bind of an
// unlinked file could not be bound again (the tool init binds it over an image's).
const resolvDir = "/tmp/.axocoatl-net"

// bindResolvConf writes content to a root-owned file and binds it read-only over the root's
// /etc/resolv.conf (an empty file in the guest image).
func bindResolvConf(content string) error {
	if err := os.Mkdir(resolvDir, 0o700); err != nil {
		return fmt.Errorf("net: %w", err)
	}
	name := resolvDir + "/resolv.conf"
	if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
		return fmt.Errorf("net: %w", err)
	}
	if err := unix.Mount(name, resolvConf, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("net: bind %s: %w", resolvConf, err)
	}
	if err := unix.Mount("", resolvConf, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("net: remount %s: %w", resolvConf, err)
	}
	return nil
}
