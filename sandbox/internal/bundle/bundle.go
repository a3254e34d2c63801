// Package bundle reads OCI bundles (a tool folder's config.json + rootfs/) the same way for every
// tier that runs them: the Oci tier's containers and the microVM tier's image drives. A bundle
// is untrusted: only its process (args, env, cwd, user) and root path are taken from config.json,
// paths are confined by the kernel (confine_linux.go), and everything is bounded.
//
// It also defines the process of a script tool (Python, Shell, Arbitrary) that runs on a base
// image, so that both tiers run it alike.
package bundle

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/axocoatl/isolation"
)

// Defaults and bounds.
const (
	// DefaultPath is the PATH of a process whose config.json sets no environment.
	DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// MaxArgBytes bounds a process's args and env together.
	MaxArgBytes = 64 << 10
	// MaxID bounds the uid and gids a bundle may name: the Oci tier maps 65,536 ids per
	// container, and the microVM tier refuses the same ids so that a bundle runs in both or in
	// neither.
	MaxID = 65535
	// ToolDir is where a script tool's folder appears on a base image.
	ToolDir = "/axocoatl/tool"
)

// Error is the error of a bundle whose files cannot be used: the tool is broken.
func Error(dir, what string, err error) error {
	return &isolation.Error{Kind: isolation.ErrInvalidTool, Message: fmt.Sprintf("bundle %s: %s: %v", dir, what, err), Err: err}
}

// Process is what a bundle's config.json contributes besides its root.
type Process struct {
	Args           []string
	Env            []string
	Cwd            string
	UID, GID       uint32
	AdditionalGids []uint32
}

// config is the part of config.json that is read; everything else is ignored.
type config struct {
	Process *struct {
		Args []string `json:"args"`
		Env  []string `json:"env"`
		Cwd  string   `json:"cwd"`
		User struct {
			UID            uint32   `json:"uid"`
			GID            uint32   `json:"gid"`
			AdditionalGids []uint32 `json:"additionalGids"`
		} `json:"user"`
	} `json:"process"`
	Root *struct {
		Path string `json:"path"`
	} `json:"root"`
}

// ParseConfig parses config.json of the bundle in dir (absolute) and returns its root (an
// absolute path textually inside dir; the caller resolves it with ResolveRoot) and process.
// Errors say what is wrong; callers wrap them with Error.
func ParseConfig(raw []byte, dir string) (root string, p Process, err error) {
	var c config
	if err := json.Unmarshal(raw, &c); err != nil {
		return "", p, err
	}
	if c.Process == nil || len(c.Process.Args) == 0 {
		return "", p, errors.New("config.json has no process.args")
	}
	if c.Root == nil || c.Root.Path == "" {
		return "", p, errors.New("config.json has no root.path")
	}
	if !filepath.IsAbs(dir) {
		return "", p, fmt.Errorf("bundle dir %q is not absolute", dir)
	}
	root = c.Root.Path
	if filepath.IsAbs(root) {
		// An absolute root in an untrusted bundle could name any host directory.
		rel, err := filepath.Rel(dir, filepath.Clean(root))
		if err != nil || !filepath.IsLocal(rel) {
			return "", p, fmt.Errorf("config.json root.path %q is outside the bundle", root)
		}
		root = filepath.Clean(root)
	} else {
		if !filepath.IsLocal(root) {
			return "", p, fmt.Errorf("config.json root.path %q is outside the bundle", root)
		}
		root = filepath.Join(dir, root)
	}
	cp := c.Process
	if err := CheckArgs(cp.Args, cp.Env); err != nil {
		return "", p, err
	}
	cwd := cp.Cwd
	if cwd == "" {
		cwd = "/"
	}
	if !filepath.IsAbs(cwd) {
		return "", p, fmt.Errorf("config.json process.cwd %q is not absolute", cwd)
	}
	env := cp.Env
	if len(env) == 0 {
		env = []string{DefaultPath}
	}
	p = Process{Args: cp.Args, Env: env, Cwd: filepath.Clean(cwd), UID: cp.User.UID, GID: cp.User.GID, AdditionalGids: cp.User.AdditionalGids}
	return root, p, nil
}

// CheckIDs refuses a process whose ids lie outside 0..MaxID.
func (p Process) CheckIDs() error {
	for _, id := range append([]uint32{p.UID, p.GID}, p.AdditionalGids...) {
		if id > MaxID {
			return fmt.Errorf("config.json process.user names id %d, outside the container's id range 0-%d", id, MaxID)
		}
	}
	return nil
}

// CheckArgs refuses NUL bytes and more than MaxArgBytes in args and env.
func CheckArgs(args, env []string) error {
	n := 0
	for _, l := range [][]string{args, env} {
		for _, s := range l {
			if strings.IndexByte(s, 0) >= 0 {
				return errors.New("config.json process has a NUL byte in args or env")
			}
			n += len(s)
		}
	}
	if n > MaxArgBytes {
		return fmt.Errorf("config.json process args+env are %d bytes, the limit is %d", n, MaxArgBytes)
	}
	return nil
}

// ScriptArgs is the process of a script or executable tool whose entrypoint is rel (relative to
// the tool folder, which appears at ToolDir) for runtime "Python", "Shell" or "Arbitrary".
func ScriptArgs(runtime, rel string) ([]string, error) {
	if !filepath.IsLocal(rel) {
		return nil, fmt.Errorf("entrypoint %q is not inside the tool folder", rel)
	}
	p := ToolDir + "/" + filepath.ToSlash(filepath.Clean(rel))
	switch runtime {
	case "Python":
		return []string{"python3", p}, nil
	case "Shell":
		return []string{"/bin/sh", p}, nil
	case "Arbitrary":
		return []string{p}, nil
	}
	return nil, fmt.Errorf("runtime %q has no script process", runtime)
}

// ScriptEnv is the environment of a script tool on a base image whose config.json sets env: the
// image's (its PATH, and what its packages need, such as PYTHONPATH), with HOME, LANG and
// PYTHONDONTWRITEBYTECODE set as for a tool on the default root unless the image sets them.
func ScriptEnv(image []string) []string {
	env := append([]string(nil), image...)
	has := map[string]bool{}
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		has[k] = true
	}
	for _, d := range []string{DefaultPath, "HOME=/tmp", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"} {
		if k, _, _ := strings.Cut(d, "="); !has[k] {
			env = append(env, d)
		}
	}
	return env
}
