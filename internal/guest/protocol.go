// Package guest is the versioned, framed protocol between the host and the guest agent
// (cmd/axoiso-guest), shared by both sides. It runs over any byte stream: a serial port, a
// virtio-serial port or a vsock connection.
//
// A frame is an 8-byte header — the magic "AXG", the protocol version, the message type and a
// big-endian uint24 length — followed by that many bytes of JSON. Readers skip bytes before a
// magic (a serial line may carry noise before the agent set it raw) and refuse a frame of another
// version or over the size limit.
//
// The exchange: on a fresh boot the agent sends Ready once its channel is raw; after a snapshot
// restore the host sends Hello with a fresh nonce and the agent answers Ready with that nonce. The
// host then sends one Request; the agent runs it, sends one Response and powers the VM off.
package guest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
)

// Version is the protocol version this package speaks. A peer of another version is refused.
const Version = 1

// MaxFrame bounds one frame's payload (the uint24 length field's range).
const MaxFrame = 1<<24 - 1

// Type is a message type.
type Type byte

const (
	TypeReady    Type = 'R'
	TypeHello    Type = 'H'
	TypeRequest  Type = 'Q'
	TypeResponse Type = 'A'
)

var magic = [3]byte{'A', 'X', 'G'}

// ErrVersion is returned for a frame of another protocol version.
var ErrVersion = errors.New("guest protocol version mismatch")

// Ready is the agent's "waiting for a request".
type Ready struct {
	// Nonce echoes Hello.Nonce ("" on the unsolicited Ready after boot).
	Nonce string `json:"nonce,omitempty"`
	// Agent is the agent's build identifier.
	Agent string `json:"agent,omitempty"`
	// Kernel is the guest kernel release.
	Kernel string `json:"kernel,omitempty"`
	// Boot says where a fresh boot's time went, by the guest's clock (only on the unsolicited
	// Ready after boot; diagnostics only).
	Boot *BootSpans `json:"boot,omitempty"`
}

// BootSpans are guest clock readings (CLOCK_BOOTTIME, microseconds since the kernel started) at
// the agent's steps of a fresh boot. A step the boot skips reads 0.
type BootSpans struct {
	// AgentUS: the agent (PID 1) starts; everything before it is the kernel's own boot.
	AgentUS int64 `json:"agent_us"`
	// ModulesUS: the kernel modules of axocoatl.modules are loaded.
	ModulesUS int64 `json:"modules_us,omitempty"`
	// RootUS: the root drive is mounted and is the root.
	RootUS int64 `json:"root_us,omitempty"`
	// ChannelUS: the channel to the host is open and raw.
	ChannelUS int64 `json:"channel_us"`
}

// Hello asks the agent to answer Ready with Nonce.
type Hello struct {
	Nonce string `json:"nonce"`
	// Warm asks the agent to start the Python interpreter once (importing json) before it
	// answers, as the tool user: a VM that waits in a pool then serves a Python tool without
	// paying for the first, cold interpreter start (under TCG ~0.3 s of code translation).
	// An agent without Python answers at once.
	Warm bool `json:"warm,omitempty"`
	// Rehearse asks the agent to run one throw-away shell call through its whole request path
	// (decoding, writing the tool folder, starting /bin/sh as the tool user, collecting the
	// output) and to remove every trace of it before it answers. Under TCG a VMM translates guest
	// code on first use and a restored VMM starts with nothing translated: a pooled VM that
	// rehearsed serves its real call without paying for that translation.
	Rehearse bool `json:"rehearse,omitempty"`
	// RehearseImage, in a VM with an image drive, also rehearses a call on the image up to its
	// last step: the tool init sets up the tool's namespaces and root, drops its privileges and
	// fails to execute a path that does not exist (nothing of the image runs), so that the real
	// call finds that code translated.
	RehearseImage bool `json:"rehearse_image,omitempty"`
	// Net, in a VM with a NIC that waits in a pool, configures the NIC now: a pooled VM holds its
	// network namespace, and so its address, from its boot, and under TCG configuring it the
	// first time costs ~0.1 s of code translation. The call's Request carries the same Net,
	// which the agent then finds done (a different one is refused).
	Net *Net `json:"net,omitempty"`
}

// Runtime says how the agent starts the entrypoint.
type Runtime string

const (
	RuntimePython    Runtime = "python"    // python3 ENTRYPOINT
	RuntimeShell     Runtime = "shell"     // /bin/sh ENTRYPOINT
	RuntimeArbitrary Runtime = "arbitrary" // the executable itself
	// RuntimeImage runs a container image's own process (Request.Image.Args) on its root.
	RuntimeImage Runtime = "image"
)

// ImageLabel is the ext4 label of an image drive: the agent finds the drive holding a tool's
// root by it (the VMMs do not agree on the order of virtio drives).
const ImageLabel = "axoimage"

// CmdlineImage, on the kernel command line ("axocoatl.image=1"), has the agent mount the image
// drive at boot, so that a pooled VM waits with it mounted.
const CmdlineImage = "axocoatl.image"

// Image says how to run a tool on the image drive's root instead of the guest's: a container
// image's process (RuntimeImage) or a script tool on a base image. The tool runs in its own
// mount, PID, IPC and UTS namespaces, the drive (read-only, nodev, nosuid) as its root, with
// /proc, a small /dev, /dev/shm, /tmp and /axocoatl (its input read-only; the tool folder, for a
// script tool, read-only at /axocoatl/tool) mounted as the Oci tier mounts them; with no
// capabilities and no_new_privs, whatever its uid.
type Image struct {
	// Args is the process (RuntimeImage only; a script tool's comes from Runtime and Entrypoint).
	// Args[0] without a '/' is looked up in Env's PATH inside the image.
	Args []string `json:"args,omitempty"`
	// Env is the process environment.
	Env []string `json:"env"`
	// Cwd is the working directory inside the image (absolute).
	Cwd string `json:"cwd"`
	// UID, GID and AdditionalGIDs are the process's credentials.
	UID            uint32   `json:"uid"`
	GID            uint32   `json:"gid"`
	AdditionalGIDs []uint32 `json:"additional_gids,omitempty"`
	// TmpSizeMB sizes /tmp (0: the agent's default).
	TmpSizeMB int `json:"tmp_size_mb,omitempty"`
}

// ToolUID and ToolGID are the credentials the agent runs tools with (nobody/nogroup, no
// supplementary groups). The host sends a tool folder with the access this uid would have to it.
const ToolUID, ToolGID = 65534, 65534

// File is one file of the tool's folder.
type File struct {
	// Path is relative to the tool folder, slash-separated, without ".." or a leading "/".
	Path string `json:"path"`
	// Mode holds the permission bits the tool has on the file (0o444 or 0o555: what ToolUID may
	// do with it on the host, read-only); the agent writes the file root-owned with them.
	Mode uint32 `json:"mode"`
	Data []byte `json:"data"`
}

// Request is one call.
type Request struct {
	// ID is the call id; the agent sets it as the hostname, so clones differ.
	ID      string  `json:"id"`
	Runtime Runtime `json:"runtime"`
	// Entrypoint is the tool's file to run, relative to the tool folder.
	Entrypoint string `json:"entrypoint"`
	Files      []File `json:"files"`
	// Input is written to /axocoatl/input.json.
	Input []byte `json:"input"`
	// Env is the tool's environment beyond the agent's own (NAME=value): tool.json env and the
	// secrets granted to the tool.
	Env []string `json:"env,omitempty"`
	// Entropy is fresh host randomness the agent mixes into the guest RNG and reseeds from
	// before it runs the tool (snapshot clones would otherwise share random state).
	Entropy []byte `json:"entropy"`
	// TimeoutMS is the tool's wall-clock limit inside the guest.
	TimeoutMS int64 `json:"timeout_ms"`
	// MaxOutputBytes bounds output.json.
	MaxOutputBytes int64 `json:"max_output_bytes"`
	// MaxStderrBytes bounds the stderr tail, and the stdout tail.
	MaxStderrBytes int `json:"max_stderr_bytes"`
	// Image, when set, runs the tool on the image drive's root (see Image).
	Image *Image `json:"image,omitempty"`
	// Net, when set, configures the VM's NIC (eth0) before the tool runs: the call has a network
	// policy. Without it the NIC (if any) stays down and unaddressed.
	Net *Net `json:"net,omitempty"`
}

// Net is the network configuration of a call with a network policy: the guest's address on
// eth0, its one route and its resolver (the host side of the call's link, where the egress
// gate answers DNS). The agent checks every field (an IPv4 address each, PrefixLen 1..31,
// Gateway inside the prefix) and refuses the call otherwise.
type Net struct {
	// Addr and PrefixLen are eth0's address ("169.254.64.3", 31).
	Addr      string `json:"addr"`
	PrefixLen int    `json:"prefix_len"`
	// Gateway is the default route's next hop.
	Gateway string `json:"gateway"`
	// DNS is the only nameserver of /etc/resolv.conf.
	DNS string `json:"dns"`
}

// Check parses n, refusing anything but what Net documents.
func (n *Net) Check() (addr, gw, dns netip.Addr, err error) {
	if addr, err = netip.ParseAddr(n.Addr); err != nil || !addr.Is4() {
		return addr, gw, dns, fmt.Errorf("net: address %q is not IPv4", n.Addr)
	}
	if n.PrefixLen < 1 || n.PrefixLen > 31 {
		return addr, gw, dns, fmt.Errorf("net: prefix length %d", n.PrefixLen)
	}
	if gw, err = netip.ParseAddr(n.Gateway); err != nil || !gw.Is4() || !netip.PrefixFrom(addr, n.PrefixLen).Contains(gw) || gw == addr {
		return addr, gw, dns, fmt.Errorf("net: gateway %q is not another IPv4 address of %s/%d", n.Gateway, n.Addr, n.PrefixLen)
	}
	if dns, err = netip.ParseAddr(n.DNS); err != nil || !dns.Is4() {
		return addr, gw, dns, fmt.Errorf("net: DNS server %q is not IPv4", n.DNS)
	}
	return addr, gw, dns, nil
}

// Response is what the tool did.
type Response struct {
	ExitCode int `json:"exit_code"`
	// Output is output.json's content, present only when HasOutput.
	Output    []byte `json:"output,omitempty"`
	HasOutput bool   `json:"has_output"`
	// OutputTooLarge is set when output.json was over MaxOutputBytes (Output is then empty).
	OutputTooLarge bool `json:"output_too_large,omitempty"`
	// OutputInvalid says why output.json was refused (not a regular file, ...).
	OutputInvalid string `json:"output_invalid,omitempty"`
	// Stderr and Stdout are bounded tails (MaxStderrBytes each) of the tool's stderr and stdout.
	Stderr string `json:"stderr"`
	Stdout string `json:"stdout,omitempty"`
	// OOMKilled is set when the guest's OOM killer ran during the call.
	OOMKilled bool `json:"oom_killed,omitempty"`
	// TimedOut is set when the agent killed the tool at TimeoutMS.
	TimedOut bool `json:"timed_out,omitempty"`
	// RunMS is how long the tool ran, by the guest's clock (start to exit).
	RunMS int64 `json:"run_ms"`
	// Error reports a failure of the agent itself (the tool could not be started).
	Error string `json:"error,omitempty"`
	// Spans says where the agent's time went, by the guest's clock (diagnostics only).
	Spans *Spans `json:"spans,omitempty"`
}

// Spans are the agent's timings of one call, in microseconds.
type Spans struct {
	// RecvUS runs from the request frame's first bytes arriving to its last.
	RecvUS int64 `json:"recv_us"`
	// DecodeUS is the request's JSON decoding.
	DecodeUS int64 `json:"decode_us"`
	// PrepUS covers reseeding and writing the tool's files and input.
	PrepUS int64 `json:"prep_us"`
	// RunUS runs from starting the tool's process to reaping it (RunMS measures the same).
	RunUS int64 `json:"run_us"`
	// CollectUS covers reading output.json and the OOM counter afterwards.
	CollectUS int64 `json:"collect_us"`
}

// WriteFrame writes one message.
func WriteFrame(w io.Writer, t Type, msg any) error {
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if len(body) > MaxFrame {
		return fmt.Errorf("guest: %c frame of %d bytes is over the %d-byte limit", t, len(body), MaxFrame)
	}
	buf := make([]byte, 8+len(body))
	copy(buf, magic[:])
	buf[3] = Version
	buf[4] = byte(t)
	n := len(body)
	buf[5], buf[6], buf[7] = byte(n>>16), byte(n>>8), byte(n)
	copy(buf[8:], body)
	_, err = w.Write(buf)
	return err
}

// Reader reads frames from a stream.
type Reader struct {
	r *bufio.Reader
	// Max bounds a frame's payload (MaxFrame when 0).
	Max int
	// Skipped counts bytes skipped before magics (noise on a serial line).
	Skipped int
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 64<<10)} }

// Next reads the next frame, skipping bytes that precede a magic, and returns its type and raw
// JSON payload.
func (fr *Reader) Next() (Type, []byte, error) {
	matched := 0
	for matched < len(magic) {
		b, err := fr.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		switch {
		case b == magic[matched]:
			matched++
		case b == magic[0]:
			fr.Skipped += matched
			matched = 1
		default:
			fr.Skipped += matched + 1
			matched = 0
		}
	}
	var h [5]byte
	if _, err := io.ReadFull(fr.r, h[:]); err != nil {
		return 0, nil, unexpected(err)
	}
	if h[0] != Version {
		return 0, nil, fmt.Errorf("%w: peer speaks %d, this side %d", ErrVersion, h[0], Version)
	}
	n := int(h[2])<<16 | int(h[3])<<8 | int(h[4])
	max := fr.Max
	if max <= 0 {
		max = MaxFrame
	}
	if n > max {
		return 0, nil, fmt.Errorf("guest: %c frame of %d bytes is over the %d-byte limit", h[1], n, max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(fr.r, body); err != nil {
		return 0, nil, unexpected(err)
	}
	return Type(h[1]), body, nil
}

// Expect reads frames until one of type t arrives (skipping Ready frames that do not match when
// t is TypeReady and nonce is set) and decodes it into msg.
func (fr *Reader) Expect(t Type, nonce string, msg any) error {
	for {
		got, body, err := fr.Next()
		if err != nil {
			return err
		}
		if got != t {
			if got == TypeReady {
				continue // a stale unsolicited Ready
			}
			return fmt.Errorf("guest: expected a %c frame, got %c", t, got)
		}
		if err := json.Unmarshal(body, msg); err != nil {
			return fmt.Errorf("guest: bad %c frame: %w", t, err)
		}
		if t == TypeReady && nonce != "" {
			if r, ok := msg.(*Ready); ok && r.Nonce != nonce {
				continue
			}
		}
		return nil
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
