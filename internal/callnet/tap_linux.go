package callnet

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Namespaces for VMs (Config.ForVMs). A VM's network stack is its guest kernel's, so the
// namespace carries nothing of its own at layer 3: eth0 (the inside end of the pair) has no
// address and no route, and the VM's NIC, a tap device in the same namespace, is joined to it at
// layer 2 by two tc redirects (every frame arriving on eth0 leaves through the tap, and the
// reverse), the way Kata Containers joins a VM to a container's network. The guest takes the
// namespace's container address (NS.Addr) and routes via NS.Peer, so to the host it is what a
// container of the Oci tier is: the same host-side link, rules, addresses and gate binding.
// Nothing of the namespace's own stack sees the frames (a redirect steals them before it), and
// no bridge is involved: the tap has exactly one peer.

// TapName is the name of a VM namespace's tap device.
const TapName = "tap0"

// tapFlags: a layer-2 tap without packet information, with virtio-net headers (both VMMs use
// them for checksum and segmentation offloads).
const tapFlags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR

// configureForVM brings up lo and eth0 (no address, no route) in a namespace for VMs.
func configureForVM(fd int) error {
	h, err := netlink.NewHandleAt(nsHandle(fd))
	if err != nil {
		return err
	}
	defer h.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

// OpenTap makes the namespace's tap device (TapName), joins it to eth0 and returns its queue for
// a VMM to inherit (QEMU's -netdev tap,fd=N). The tap lives as long as a descriptor of it is
// open: when the VMM exits and the caller closed its own copy, the kernel removes it. Only for a
// namespace of a pool with Config.ForVMs.
func (n *NS) OpenTap() (*os.File, error) { return n.makeTap(false) }

// MakeTap makes a persistent tap (TapName) owned by uid and gid, joined to eth0, for a VMM that
// opens it by name from inside the namespace (Firecracker under its jailer, with
// host_dev_name). It stays until the namespace is recycled or destroyed.
func (n *NS) MakeTap(uid, gid int) error {
	f, err := n.makeTap(true, uid, gid)
	if f != nil {
		f.Close()
	}
	return err
}

func (n *NS) makeTap(persist bool, owner ...int) (tap *os.File, err error) {
	if !n.p.cfg.ForVMs {
		return nil, errors.New("callnet: a tap needs a namespace of a pool for VMs")
	}
	err = inNetns(n.Fd(), func() error {
		// Opened from a thread inside: a tap is created in its opener's network namespace.
		f, err := os.OpenFile("/dev/net/tun", os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(TapName)
		if err != nil {
			f.Close()
			return err
		}
		ifr.SetUint16(tapFlags)
		if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNSETIFF, ifr); err != nil {
			f.Close()
			return fmt.Errorf("TUNSETIFF %s: %w", TapName, err)
		}
		if persist {
			for _, c := range []struct {
				req uint
				v   int
			}{{unix.TUNSETOWNER, owner[0]}, {unix.TUNSETGROUP, owner[1]}, {unix.TUNSETPERSIST, 1}} {
				if err := unix.IoctlSetInt(int(f.Fd()), c.req, c.v); err != nil {
					f.Close()
					return fmt.Errorf("tap ioctl %#x: %w", c.req, err)
				}
			}
		}
		tap = f
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("callnet: tap in %s: %w", n.Link, err)
	}
	if err := n.joinTap(); err != nil {
		tap.Close()
		n.removeTap()
		return nil, fmt.Errorf("callnet: tap in %s: %w", n.Link, err)
	}
	return tap, nil
}

// joinTap brings the tap up and redirects every frame arriving on eth0 out through the tap and
// every frame arriving on the tap out through eth0 (ingress qdiscs, a match-all u32 filter with
// a mirred redirect on each side).
func (n *NS) joinTap() error {
	h, err := netlink.NewHandleAt(nsHandle(n.Fd()))
	if err != nil {
		return err
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	tap, err := h.LinkByName(TapName)
	if err != nil {
		return err
	}
	if err := h.LinkSetUp(tap); err != nil {
		return err
	}
	for _, d := range []struct{ from, to netlink.Link }{{eth, tap}, {tap, eth}} {
		idx := d.from.Attrs().Index
		q := ingress(idx)
		// eth0's qdisc may hold the redirect to a previous VM's tap: deleting it drops its filter.
		_ = h.QdiscDel(q)
		if err := h.QdiscAdd(q); err != nil {
			return fmt.Errorf("ingress qdisc on %s: %w", d.from.Attrs().Name, err)
		}
		f := &netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: idx, Parent: q.Handle, Priority: 1, Protocol: unix.ETH_P_ALL},
			RedirIndex: d.to.Attrs().Index}
		if err := h.FilterAdd(f); err != nil {
			return fmt.Errorf("redirect %s to %s: %w", d.from.Attrs().Name, d.to.Attrs().Name, err)
		}
	}
	return nil
}

// removeTap deletes the namespace's tap and eth0's redirect to it; neither existing is no error.
func (n *NS) removeTap() {
	h, err := netlink.NewHandleAt(nsHandle(n.Fd()))
	if err != nil {
		return
	}
	defer h.Close()
	if l, err := h.LinkByName(TapName); err == nil {
		_ = h.LinkDel(l)
	}
	if eth, err := h.LinkByName("eth0"); err == nil {
		_ = h.QdiscDel(ingress(eth.Attrs().Index))
	}
}

// ingress is the ingress qdisc of link idx.
func ingress(idx int) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}
}
