package microvm

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/internal/guest"
	"github.com/axocoatl/isolation/sandbox"
	"github.com/axocoatl/isolation/sandbox/internal/bundle"
	"github.com/axocoatl/isolation/sandbox/microvm/internal/rootdrive"
)

// Tools on images: a ContainerImage tool's bundle, or the base image a script tool names
// (sandbox.Call.Base), boots as a second, read-only drive (its rootfs as ext4, built once per
// content digest by package rootdrive and cached under DriveDir). The agent mounts it read-only,
// nodev, nosuid and runs the tool on it in namespaces of its own (see guest.Image). VMs with a
// drive are their own shapes (pools and snapshots are keyed by the drive's digest); while a
// shape is in use, its drive is held, so the cache's size cap never removes it.

// SupportsBase implements sandbox.BaseSupporter: script tools run on a base image.
func (s *Sandbox) SupportsBase(req isolation.RuntimeRequirement) string {
	switch req {
	case isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary:
		return ""
	}
	return fmt.Sprintf("the microVM tier runs %s tools on a base image only as Python, Shell or Arbitrary", req)
}

// drives returns the root drive cache, created on first use.
func (s *Sandbox) drives() (*rootdrive.Cache, error) {
	s.driveOnce.Do(func() {
		dir := s.opts.DriveDir
		if dir == "" {
			dir = filepath.Join(s.opts.DataDir, "drives")
		}
		s.driveCache, s.driveErr = rootdrive.New(rootdrive.Config{Dir: dir, MaxBytes: s.opts.DriveCacheBytes, Logger: s.log})
	})
	return s.driveCache, s.driveErr
}

// imageRoot returns the rootfs a call runs on (resolved beneath its bundle) and the bundle's
// process, or "" for a call on the guest's own root.
func imageRoot(call sandbox.Call) (string, bundle.Process, error) {
	switch {
	case call.Runtime == isolation.RequireContainerImage:
		root, p, err := bundle.Read(call.Dir)
		if err == nil {
			if err = p.CheckIDs(); err != nil {
				err = bundle.Error(call.Dir, "config.json", err)
			}
		}
		return root, p, err
	case call.Base != "":
		if !filepath.IsAbs(call.Base) {
			return "", bundle.Process{}, fmt.Errorf("call for %q has a relative base %q", call.Tool, call.Base)
		}
		return bundle.Read(call.Base)
	}
	return "", bundle.Process{}, nil
}

// imageProcess is what the agent runs on the image: a container image's own process, or a
// script tool (entrypoint rel) as it runs on a base image in the Oci tier.
func imageProcess(call sandbox.Call, p bundle.Process, rel string) (*guest.Image, error) {
	if call.Runtime == isolation.RequireContainerImage {
		return &guest.Image{Args: p.Args, Env: sandbox.MergeEnv(p.Env, call.Env), Cwd: p.Cwd, UID: p.UID, GID: p.GID, AdditionalGIDs: p.AdditionalGids}, nil
	}
	args, err := bundle.ScriptArgs(call.Runtime.String(), rel)
	if err != nil {
		return nil, err
	}
	return &guest.Image{Args: args, Env: sandbox.MergeEnv(bundle.ScriptEnv(p.Env), call.Env), Cwd: bundle.ToolDir, UID: guest.ToolUID, GID: guest.ToolGID}, nil
}

// openDrive returns the drive of rootfs, building it when needed. A tree that cannot become a
// drive is the tool's fault (isolation.ErrInvalidTool).
func (s *Sandbox) openDrive(ctx context.Context, tool, rootfs string) (*rootdrive.Drive, error) {
	c, err := s.drives()
	if err != nil {
		return nil, sandboxFailed(err, "root drive cache")
	}
	d, err := c.Open(ctx, rootfs)
	switch {
	case errors.Is(err, rootdrive.ErrTree):
		return nil, &isolation.Error{Kind: isolation.ErrInvalidTool, Tool: tool, Message: err.Error(), Err: err}
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("microvm: root drive: %w", sandbox.ContextError(ctx))
	case err != nil:
		return nil, sandboxFailed(err, "root drive")
	}
	return d, nil
}

// Setup implements sandbox.Setupper: an image tool's drive is built before the call's clock
// starts (building it is the platform's cost, not the tool's; once built, this is a metadata
// walk at most every 2 s).
func (s *Sandbox) Setup(ctx context.Context, call sandbox.Call) error {
	if call.Runtime != isolation.RequireContainerImage && call.Base == "" {
		return nil
	}
	if _, _, a := s.backend(ctx); !a.Available {
		return nil // Run says why
	}
	rootfs, _, err := imageRoot(call)
	if err != nil {
		return err
	}
	d, err := s.openDrive(ctx, call.Tool, rootfs)
	if err != nil {
		return err
	}
	return d.Close()
}

// hold keeps a handle on the drive of shape sh while sh is in use (see touch and drop). Called
// with s.mu held.
func (s *Sandbox) holdLocked(sh shape, d *rootdrive.Drive) {
	if sh.drive == "" || d == nil || s.held[sh.drive] != nil {
		return
	}
	c, err := d.Clone()
	if err != nil {
		s.log.Warn("hold root drive", "err", err)
		return
	}
	s.held[sh.drive] = c
}

// releaseUnheldLocked closes the held drives no shape in use needs any more. Called with s.mu held.
func (s *Sandbox) releaseUnheldLocked() {
	for digest, d := range s.held {
		inUse := false
		for sh := range s.used {
			if sh.drive == digest {
				inUse = true
				break
			}
		}
		if !inUse {
			d.Close()
			delete(s.held, digest)
		}
	}
}
