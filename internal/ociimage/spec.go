package ociimage

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultPath is what Docker and runc use when the image sets no PATH.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// runtimeSpec builds config.json from the image config: process.args = Entrypoint + Cmd, Env
// (plus PATH and HOME when missing), Cwd = WorkingDir, User resolved against the rootfs'
// /etc/passwd and /etc/group (read without following symlinks out of the rootfs). The isolation
// around it is a sane, closed default (new namespaces, read-only root, no capabilities,
// no_new_privs); the Oci tier applies its own policy over it anyway.
func runtimeSpec(rootfs string, cfg *v1.ConfigFile) (*specs.Spec, error) {
	c := cfg.Config
	args := append(append([]string{}, c.Entrypoint...), c.Cmd...)
	if len(args) == 0 {
		return nil, fmt.Errorf("%w: the image config has neither Entrypoint nor Cmd: nothing to run", ErrInvalidImage)
	}
	cwd := "/"
	if c.WorkingDir != "" {
		cwd = path.Join("/", c.WorkingDir)
	}
	eu, err := resolveUser(rootfs, c.User)
	if err != nil {
		return nil, err
	}
	env := append([]string{}, c.Env...)
	if !hasEnv(env, "PATH") {
		env = append(env, defaultPath)
	}
	if !hasEnv(env, "HOME") && eu.Home != "" {
		env = append(env, "HOME="+eu.Home)
	}
	var extraGIDs []uint32
	for _, g := range eu.Sgids {
		if g != eu.Gid {
			extraGIDs = append(extraGIDs, uint32(g))
		}
	}
	var annotations map[string]string
	if len(c.Labels) > 0 {
		annotations = make(map[string]string, len(c.Labels))
		for k, v := range c.Labels {
			annotations[k] = v
		}
	}
	spec := &specs.Spec{
		Version: specs.Version,
		Process: &specs.Process{
			User: specs.User{UID: uint32(eu.Uid), GID: uint32(eu.Gid), AdditionalGids: extraGIDs},
			Args: args,
			Env:  env,
			Cwd:  cwd,
			// No capabilities at all: a tool reads JSON and writes JSON.
			Capabilities:    &specs.LinuxCapabilities{},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: "rootfs", Readonly: true},
		Hostname: "axocoatl",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", "size=65536k"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
			MaskedPaths: []string{"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
		Annotations: annotations,
	}
	return spec, nil
}

func hasEnv(env []string, key string) bool {
	for _, e := range env {
		if k, _, _ := strings.Cut(e, "="); k == key {
			return true
		}
	}
	return false
}

// resolveUser resolves the image's User ("", "name", "uid", "name:group", "uid:gid", ...) as
// Docker and runc do: names must exist in the rootfs' /etc/passwd or /etc/group; a numeric uid
// not listed there runs with gid 0 (or the given gid); supplementary groups come from /etc/group.
func resolveUser(rootfs, spec string) (*user.ExecUser, error) {
	r, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	passwd, err := openEtc(r, "etc/passwd")
	if err != nil {
		return nil, err
	}
	if passwd != nil {
		defer passwd.Close()
	}
	group, err := openEtc(r, "etc/group")
	if err != nil {
		return nil, err
	}
	if group != nil {
		defer group.Close()
	}
	// Nil readers must stay untyped nils for GetExecUser to skip them.
	var pr, gr io.Reader
	if passwd != nil {
		pr = passwd
	}
	if group != nil {
		gr = group
	}
	eu, err := user.GetExecUser(spec, &user.ExecUser{Uid: 0, Gid: 0, Home: "/"}, pr, gr)
	if err != nil {
		return nil, fmt.Errorf("%w: user %q: %v", ErrInvalidImage, truncate(spec, 100), err)
	}
	sort.Ints(eu.Sgids)
	return eu, nil
}

// openEtc opens a file inside the rootfs through r, which refuses symlinks that lead out of it.
// A missing file is (nil, nil).
func openEtc(r *os.Root, name string) (*os.File, error) {
	f, err := r.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: reading /%s in the rootfs: %v", ErrUnsafeLayer, name, err)
	}
	return f, nil
}
