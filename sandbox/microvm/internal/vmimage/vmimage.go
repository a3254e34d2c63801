// Package vmimage prepares the guest of the microVM tier: an uncompressed guest kernel, the kernel
// modules the agent loads, and a guest root (the agent as /init, a Python 3 runtime, dash and
// busybox, all from Debian packages) as a directory, an initramfs and optionally an ext4 image.
//
// Prepare is idempotent and cached in a data directory; Load reads what it left.
package vmimage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// DefaultDataDir is where Prepare keeps the image when run as root.
const DefaultDataDir = "/var/lib/axocoatl/vm"

// elfInterpreter returns the program interpreter (PT_INTERP) an ELF binary asks for: "" for a
// static binary (or bytes that do not parse as ELF, which the boot then reports).
func elfInterpreter(b []byte) string {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return ""
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			buf := make([]byte, min(p.Filesz, 4096))
			n, _ := p.ReadAt(buf, 0)
			return strings.TrimRight(string(buf[:n]), "\x00")
		}
	}
	return ""
}

// FormatVersion changes whenever the layout or contents Prepare produces change; a data dir of
// another version is rebuilt.
const FormatVersion = 6

// DefaultKernelPackage is the Debian meta package whose dependency is the guest kernel.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// DefaultRootPackages are the Debian packages unpacked into the guest root. Their own
// dependencies are not followed: this list is what python3 (with its pure-Python stdlib), /bin/sh
// and busybox need.
var DefaultRootPackages = []string{
	"libc6", "zlib1g", "libexpat1", "libssl3", "libffi8", "libbz2-1.0", "liblzma5",
	"python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
	"dash", "busybox",
}

// Modules are loaded by the agent in this order when its channel needs them (vsock, virtio
// console), its root is a drive (virtio_blk) or the VM has a NIC (virtio_net, which needs
// failover and net_failover: modules in Debian's cloud kernel); the QEMU serial channel needs none.
var Modules = []string{
	"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console",
	"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
	"failover", "net_failover", "virtio_net",
}

// NICModules are the modules of Modules a VM with a NIC loads (after virtio_ring, virtio and
// virtio_mmio).
var NICModules = []string{"failover", "net_failover", "virtio_net"}

// Config says what Prepare builds.
type Config struct {
	// DataDir holds the result (DefaultDataDir when "").
	DataDir string
	// Agent is the static axoiso-guest binary (default: "axoiso-guest" beside the running
	// executable).
	Agent string
	// Kernel is a guest kernel to use instead of Debian's (an ELF vmlinux or a bzImage with an
	// LZ4 or gzip payload); ModulesDir then optionally names its /lib/modules/<release> dir.
	Kernel     string
	ModulesDir string
	// Ext4 also builds rootfs.ext4 (needs mkfs.ext4 from e2fsprogs) and the small boot
	// initramfs that mounts it (Image.BootInitrd).
	Ext4 bool
	// Force rebuilds even when the data dir is current.
	Force bool
	// Logger receives progress (slog.Default when nil).
	Logger *slog.Logger
}

// Image is a prepared guest.
type Image struct {
	Dir string `json:"-"`
	// Kernel is the uncompressed vmlinux.
	Kernel string `json:"kernel"`
	// Initrd is the newc initramfs of RootFS.
	Initrd string `json:"initrd"`
	// RootFS is the guest root as a plain directory (also the Oci tier's runtime root).
	RootFS string `json:"rootfs"`
	// Ext4 is the read-only ext4 image of RootFS ("" when not built).
	Ext4 string `json:"ext4,omitempty"`
	// BootInitrd is a small initramfs (the agent as /init and its modules, ~4 MB) for booting
	// with Ext4 as the root drive: the agent loads virtio_blk, mounts the drive read-only and
	// makes it the root (axocoatl.root on the kernel command line). Nothing to unpack, so a boot
	// is faster and the guest needs less memory than with Initrd. "" when Ext4 is.
	BootInitrd    string `json:"boot_initrd,omitempty"`
	KernelRelease string `json:"kernel_release"`
	// Modules lists the modules present in /lib/modules/axocoatl, in load order.
	Modules []string `json:"modules"`
	// AgentSHA256 identifies the agent built in.
	AgentSHA256 string    `json:"agent_sha256"`
	Version     int       `json:"version"`
	Created     time.Time `json:"created"`
	// PrepareSeconds is how long the build took.
	PrepareSeconds float64 `json:"prepare_seconds"`
}

// ErrNotPrepared is returned by Load when Prepare has not run (or is outdated).
var ErrNotPrepared = errors.New("microVM guest image not prepared (run `axoiso vm prepare`)")

// Load returns the image prepared in dataDir.
func Load(dataDir string) (Image, error) {
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "manifest.json"))
	if err != nil {
		return Image{}, fmt.Errorf("%w: %s has no manifest", ErrNotPrepared, dataDir)
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil || img.Version != FormatVersion {
		return Image{}, fmt.Errorf("%w: %s holds an image of another format", ErrNotPrepared, dataDir)
	}
	img.Dir = dataDir
	for _, p := range []*string{&img.Kernel, &img.Initrd, &img.RootFS, &img.Ext4, &img.BootInitrd} {
		if *p == "" {
			continue
		}
		*p = filepath.Join(dataDir, *p)
		if _, err := os.Stat(*p); err != nil {
			return Image{}, fmt.Errorf("%w: %v", ErrNotPrepared, err)
		}
	}
	return img, nil
}

// DefaultAgent is the agent binary Prepare uses when Config.Agent is "".
func DefaultAgent() string {
	exe, err := os.Executable()
	if err != nil {
		return "axoiso-guest"
	}
	return filepath.Join(filepath.Dir(exe), "axoiso-guest")
}

// Prepare builds the image in cfg.DataDir unless a current one is there. Concurrent Prepares of
// one data dir serialize on a lock file.
func Prepare(ctx context.Context, cfg Config) (Image, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if cfg.Agent == "" {
		cfg.Agent = DefaultAgent()
	}
	agent, err := os.ReadFile(cfg.Agent)
	if err != nil {
		return Image{}, fmt.Errorf("guest agent: %w (build it with CGO_ENABLED=0 go build ./cmd/axoiso-guest)", err)
	}
	if !bytes.HasPrefix(agent, elfMagic) {
		return Image{}, fmt.Errorf("guest agent %s is not an ELF binary", cfg.Agent)
	}
	if interp := elfInterpreter(agent); interp != "" {
		// The guest has no dynamic loader: the kernel would panic, "Failed to execute /init".
		// `go build` links the agent dynamically whenever cgo is on (the axoiso binary's
		// default build: libseccomp).
		return Image{}, fmt.Errorf("guest agent %s is dynamically linked (interpreter %s), and the guest has no dynamic loader: build it with CGO_ENABLED=0 go build ./cmd/axoiso-guest", cfg.Agent, interp)
	}
	sum := sha256.Sum256(agent)
	agentSum := hex.EncodeToString(sum[:])
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return Image{}, err
	}
	lock, err := os.OpenFile(filepath.Join(cfg.DataDir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return Image{}, err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return Image{}, err
	}
	if img, err := Load(cfg.DataDir); err == nil && !cfg.Force && img.AgentSHA256 == agentSum && (!cfg.Ext4 || img.Ext4 != "" && img.BootInitrd != "") {
		return img, nil
	}
	start := time.Now()
	build, err := os.MkdirTemp(cfg.DataDir, ".build-")
	if err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(build)
	// apt's sandbox user must be able to write the downloads.
	_ = os.Chmod(build, 0o755)
	debs := filepath.Join(build, "debs")
	root := filepath.Join(build, "rootfs")
	for _, d := range []string{debs, root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return Image{}, err
		}
	}

	// Kernel.
	img := Image{Version: FormatVersion, AgentSHA256: agentSum, Kernel: "vmlinux", Initrd: "initramfs.cpio", RootFS: "rootfs"}
	kernelFile, modulesDir := cfg.Kernel, cfg.ModulesDir
	pkgs := append([]string(nil), DefaultRootPackages...)
	var kpkg string
	if kernelFile == "" {
		kpkg, err = kernelPackage(ctx)
		if err != nil {
			return Image{}, err
		}
		pkgs = append(pkgs, kpkg)
	}
	log.Info("vm prepare: downloading packages", "packages", strings.Join(pkgs, " "))
	if err := run(ctx, debs, "apt-get", append([]string{"download", "-q"}, pkgs...)...); err != nil {
		return Image{}, fmt.Errorf("apt-get download failed (run `apt-get update` first?): %w", err)
	}
	entries, err := os.ReadDir(debs)
	if err != nil {
		return Image{}, err
	}
	kdir := filepath.Join(build, "kernel")
	for _, e := range entries {
		dst := root
		if kpkg != "" && strings.HasPrefix(e.Name(), kpkg+"_") {
			dst = kdir
		}
		if err := run(ctx, "", "dpkg-deb", "-x", filepath.Join(debs, e.Name()), dst); err != nil {
			return Image{}, err
		}
	}
	if kernelFile == "" {
		m, _ := filepath.Glob(filepath.Join(kdir, "boot", "vmlinuz-*"))
		if len(m) != 1 {
			return Image{}, fmt.Errorf("kernel package %s holds %d vmlinuz files", kpkg, len(m))
		}
		kernelFile = m[0]
		img.KernelRelease = strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-")
		modulesDir = filepath.Join(kdir, "lib", "modules", img.KernelRelease)
	}
	raw, err := os.ReadFile(kernelFile)
	if err != nil {
		return Image{}, err
	}
	vmlinux, err := ExtractVmlinux(raw)
	if err != nil {
		return Image{}, fmt.Errorf("%s: %w", kernelFile, err)
	}
	if err := os.WriteFile(filepath.Join(build, "vmlinux"), vmlinux, 0o644); err != nil {
		return Image{}, err
	}

	// Root.
	if err := finishRoot(root, agent); err != nil {
		return Image{}, err
	}
	if err := compilePython(ctx, root, log); err != nil {
		return Image{}, err
	}
	if err := writeLdCache(ctx, root); err != nil {
		return Image{}, err
	}
	if modulesDir != "" {
		mods, err := copyModules(modulesDir, filepath.Join(root, "lib", "modules", "axocoatl"))
		if err != nil {
			return Image{}, err
		}
		img.Modules = mods
	}
	if err := writeInitramfs(root, filepath.Join(build, "initramfs.cpio")); err != nil {
		return Image{}, err
	}
	if cfg.Ext4 {
		img.Ext4 = "rootfs.ext4"
		size := dirSize(root)/(1<<20)*5/4 + 16
		if err := run(ctx, "", "mkfs.ext4", "-q", "-F", "-L", "axoguest", "-d", root, "-O", "^has_journal",
			filepath.Join(build, "rootfs.ext4"), fmt.Sprintf("%dM", size)); err != nil {
			return Image{}, fmt.Errorf("mkfs.ext4 (install e2fsprogs): %w", err)
		}
		img.BootInitrd = "initramfs-boot.cpio"
		if err := writeBootInitramfs(root, build); err != nil {
			return Image{}, err
		}
	}

	// Swap the results in, then the manifest last: a crash leaves the old manifest or none.
	_ = os.Remove(filepath.Join(cfg.DataDir, "manifest.json"))
	for _, name := range []string{"vmlinux", "initramfs.cpio", "rootfs", "rootfs.ext4", "initramfs-boot.cpio"} {
		src := filepath.Join(build, name)
		if _, err := os.Lstat(src); err != nil {
			continue
		}
		dst := filepath.Join(cfg.DataDir, name)
		if err := os.RemoveAll(dst); err != nil {
			return Image{}, err
		}
		if err := os.Rename(src, dst); err != nil {
			return Image{}, err
		}
	}
	img.Created = time.Now().UTC()
	img.PrepareSeconds = time.Since(start).Seconds()
	mb, _ := json.MarshalIndent(img, "", "  ")
	tmp := filepath.Join(cfg.DataDir, "manifest.json.tmp")
	if err := os.WriteFile(tmp, mb, 0o644); err != nil {
		return Image{}, err
	}
	if err := os.Rename(tmp, filepath.Join(cfg.DataDir, "manifest.json")); err != nil {
		return Image{}, err
	}
	log.Info("vm prepare: done", "dir", cfg.DataDir, "kernel", img.KernelRelease, "seconds", img.PrepareSeconds)
	return Load(cfg.DataDir)
}

// kernelPackage resolves the kernel meta package to the versioned image package it depends on.
func kernelPackage(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", "--no-recommends", "--no-suggests", DefaultKernelPackage).Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s (run `apt-get update` first?): %w", DefaultKernelPackage, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if p, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: "); ok && strings.HasPrefix(p, "linux-image-") {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s depends on no linux-image package (run `apt-get update`?)", DefaultKernelPackage)
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(lastLines(stderr.String(), 5)))
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// Trimmed from the root: documentation, locales, charset converters and stdlib parts no tool
// run needs; they slow the initramfs unpack on every boot.
var trim = []string{
	"usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/i18n", "usr/share/lintian",
	"usr/share/info", "usr/lib/x86_64-linux-gnu/gconv", "usr/share/doc-base", "usr/share/bug",
	"usr/lib/python3.11/test", "usr/lib/python3.11/pydoc_data", "usr/lib/python3.11/idlelib",
	"usr/lib/python3.11/ensurepip", "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/tkinter",
	"usr/lib/python3.11/turtledemo", "usr/lib/python3.11/config-3.11-x86_64-linux-gnu",
	"usr/lib/x86_64-linux-gnu/engines-3", "usr/lib/x86_64-linux-gnu/ossl-modules",
	"etc/init.d", "etc/ld.so.conf.d",
	// Debian's sitecustomize only tries to import apport's hook (absent): a failed import searched
	// along the whole sys.path at every Python start.
	"etc/python3.11/sitecustomize.py",
	// Interactive, GUI, packaging and demo parts of the stdlib: no JSON-in/JSON-out tool needs them.
	"usr/lib/python3.11/distutils", "usr/lib/python3.11/venv", "usr/lib/python3.11/curses",
	"usr/lib/python3.11/turtle.py", "usr/lib/python3.11/antigravity.py", "usr/lib/python3.11/this.py",
	"usr/lib/python3.11/pydoc.py", "usr/lib/python3.11/__phello__", "usr/lib/python3.11/__hello__.py",
	"usr/lib/python3.11/LICENSE.txt", "usr/lib/python3.11/lib-dynload/_curses.cpython-311-x86_64-linux-gnu.so",
	"usr/lib/python3.11/lib-dynload/_curses_panel.cpython-311-x86_64-linux-gnu.so",
	"usr/lib/python3.11/lib-dynload/_tkinter.cpython-311-x86_64-linux-gnu.so",
	"usr/lib/python3.11/lib-dynload/_test*", "usr/lib/python3.11/lib-dynload/xx*",
	"usr/lib/python3.11/lib-dynload/_xx*", "usr/lib/python3.11/lib-dynload/_ctypes_test*",
}

var busyboxApplets = []string{"awk", "base64", "basename", "cat", "chmod", "cp", "cut", "date", "dd",
	"dirname", "echo", "env", "false", "grep", "head", "hostname", "id", "ls", "md5sum", "mkdir", "mv",
	"od", "printf", "rm", "sed", "seq", "sha256sum", "sleep", "sort", "tail", "tee", "test", "touch",
	"tr", "true", "uname", "uniq", "wc", "xargs"}

func finishRoot(root string, agent []byte) error {
	for _, t := range trim {
		m, _ := filepath.Glob(filepath.Join(root, t))
		for _, p := range m {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "axocoatl", "etc", "bin", "usr/bin", "lib/modules/axocoatl", "root"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	_ = os.Chmod(filepath.Join(root, "tmp"), 0o1777)
	if err := os.WriteFile(filepath.Join(root, "init"), agent, 0o755); err != nil {
		return err
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":    "root:x:0:\nnogroup:x:65534:\n",
		"etc/hostname": "axoguest\n",
		"etc/hosts":    "127.0.0.1 localhost\n",
		// Empty: a call with a network policy gets the gate's resolver mounted over it (the
		// guest agent in a VM, the Oci tier in a container on this root).
		"etc/resolv.conf": "",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	links := map[string]string{"usr/bin/python3": "python3.11", "bin/sh": "dash"}
	if _, err := os.Stat(filepath.Join(root, "bin", "busybox")); err == nil {
		for _, a := range busyboxApplets {
			links["bin/"+a] = "busybox"
		}
	}
	for name, target := range links {
		p := filepath.Join(root, name)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		if _, err := os.Lstat(filepath.Join(root, "usr", name)); err == nil {
			continue // the package ships it under /usr
		}
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	return nil
}

// writeBootInitramfs writes build/initramfs-boot.cpio: root's /init (the agent), its modules and
// the mount points the agent uses before it switches to the root drive.
func writeBootInitramfs(root, build string) error {
	boot := filepath.Join(build, "bootroot")
	for _, d := range []string{"proc", "sys", "dev", "newroot", "lib/modules/axocoatl"} {
		if err := os.MkdirAll(filepath.Join(boot, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(filepath.Join(root, "init"), filepath.Join(boot, "init")); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(boot, "init"), 0o755); err != nil {
		return err
	}
	mods, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "axocoatl", "*.ko"))
	for _, m := range mods {
		if err := copyFile(m, filepath.Join(boot, "lib", "modules", "axocoatl", filepath.Base(m))); err != nil {
			return err
		}
	}
	return writeInitramfs(boot, filepath.Join(build, "initramfs-boot.cpio"))
}

// pyDir is the guest's stdlib, pycTag the tag of its bytecode files.
const (
	pyDir  = "usr/lib/python3.11"
	pycTag = ".cpython-311.pyc"
)

// compilePython compiles the guest's stdlib to bytecode once, here, instead of on every tool start
// in every VM (under TCG the imports of a `json` tool compiled for ~0.8 s). The .pyc files are
// unchecked-hash based: valid whatever the sources' mtimes (the initramfs stores none) and never
// re-validated. It runs the guest's own python3.11 chrooted into the root, so the bytecode matches
// the interpreter exactly; it needs root (as Prepare does).
func compilePython(ctx context.Context, root string, log *slog.Logger) error {
	if _, err := os.Stat(filepath.Join(root, pyDir)); err != nil {
		return nil // no Python in this root
	}
	start := time.Now()
	err := run(ctx, "", "chroot", root, "/usr/bin/python3.11", "-E", "-s", "-m", "compileall", "-q",
		"--invalidation-mode", "unchecked-hash", "-x", "/(test|tests|idle_test)/", "/"+pyDir)
	if err != nil {
		return fmt.Errorf("compile the guest's Python stdlib: %w", err)
	}
	log.Info("vm prepare: compiled the Python stdlib", "seconds", time.Since(start).Seconds())
	return nil
}

// writeLdCache writes the root's /etc/ld.so.cache, so that the dynamic loader finds a library
// with one lookup instead of probing each default directory through the (emulated) root drive at
// every process start. Without ldconfig the root works as before, only slower to exec.
func writeLdCache(ctx context.Context, root string) error {
	conf := "/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n"
	if err := os.WriteFile(filepath.Join(root, "etc", "ld.so.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	if _, err := exec.LookPath("ldconfig"); err != nil {
		return nil
	}
	if err := run(ctx, "", "ldconfig", "-r", root); err != nil {
		return fmt.Errorf("ldconfig for the guest root: %w", err)
	}
	return nil
}

func copyModules(src, dst string) ([]string, error) {
	found := map[string]string{}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n, ok := strings.CutSuffix(d.Name(), ".ko"); ok {
			found[strings.ReplaceAll(n, "-", "_")] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	var got []string
	for _, m := range Modules {
		p, ok := found[m]
		if !ok {
			continue // built in, or absent: the agent skips what is not there
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dst, m+".ko"), stripModuleSignature(b), 0o644); err != nil {
			return nil, err
		}
		got = append(got, m)
	}
	return got, nil
}

// moduleSigMagic ends a signed kernel module: module, signature, struct module_signature (12
// bytes, the signature's length big-endian in its last 4), then this marker.
const moduleSigMagic = "~Module signature appended~\n"

// stripModuleSignature returns the module without its appended signature (b itself when it has
// none or the trailer is malformed). The guest kernel cannot check Debian's signatures anyway
// (its certificate list is not loaded: see microvm.BaseCmdline) and loads the modules tainted
// either way, but with a signature present it first hashes the whole module and parses the
// PKCS#7 blob: wasted emulated cycles at every cold boot.
func stripModuleSignature(b []byte) []byte {
	const infoLen = 12
	n := len(b) - len(moduleSigMagic)
	if n < infoLen || string(b[n:]) != moduleSigMagic {
		return b
	}
	info := b[n-infoLen : n]
	sigLen := int(binary.BigEndian.Uint32(info[8:]))
	end := n - infoLen - sigLen
	if sigLen <= 0 || end <= 0 {
		return b
	}
	return b[:end]
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func dirSize(root string) int64 {
	var n int64
	_ = filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
