package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/internal/ociimage"
)

func init() {
	register(command{name: "bundle", summary: "build a tool's OCI bundle from an image (docker://, oci:, docker-archive:)", run: runBundle})
}

func runBundle(ctx context.Context, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle", stderr)
	var cf commonFlags
	cf.add(fs)
	from := fs.String("from", "", "image reference: docker://HOST/REPO:TAG (or a bare reference), oci:DIR[:TAG], docker-archive:FILE")
	replace := fs.Bool("replace", false, "replace an existing bundle of that name (atomically)")
	insecure := fs.Bool("insecure", false, "allow plain HTTP or unverified TLS to a non-loopback registry")
	platform := fs.String("platform", "", "os/arch[/variant] to pick from a multi-platform image (default linux/GOARCH)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one tool name, got %d arguments", len(pos))
	}
	if *from == "" {
		return usagef("--from REF is required")
	}
	name := pos[0]
	if err := catalog.ValidateName(name); err != nil {
		return err
	}
	if err := localPathRef(*from); err != nil {
		return err
	}
	cfg, log, err := cf.configAndLogger(stderr)
	if err != nil {
		return err
	}
	dest := filepath.Join(cfg.ToolsRoot, name)
	err = ociimage.Build(ctx, *from, dest, ociimage.Config{Replace: *replace, Insecure: *insecure, Platform: *platform, Logger: log})
	switch {
	case errors.Is(err, ociimage.ErrBadReference):
		return usageError{err.Error()}
	case errors.Is(err, ociimage.ErrExists):
		return fmt.Errorf("%w (use --replace)", err)
	case err != nil:
		return err
	}
	fmt.Fprintf(stdout, "%s\n", dest)
	// The tool as the catalog will see it: a label's schema that does not compile is said now.
	if cat, err := catalog.Open(cfg.ToolsRoot); err == nil {
		if _, err := cat.Get(name); err != nil {
			return fmt.Errorf("the bundle was built, but the tool does not load: %w", err)
		}
	}
	return nil
}

// localPathRef refuses a --from that names a local file or directory without a transport: it
// would be taken as a docker.io reference and fail on a registry lookup.
func localPathRef(from string) error {
	for _, p := range []string{"docker://", "oci:", "docker-archive:"} {
		if strings.HasPrefix(from, p) {
			return nil
		}
	}
	fi, err := os.Stat(from)
	looksLocal := strings.HasPrefix(from, "/") || strings.HasPrefix(from, "./") || strings.HasPrefix(from, "../") ||
		strings.HasSuffix(from, ".tar") || strings.HasSuffix(from, ".tar.gz")
	switch {
	case err == nil && fi.IsDir():
		return usagef("--from %q is a local directory, not a registry reference: did you mean oci:%s (an OCI layout)?", from, from)
	case err == nil || looksLocal:
		return usagef("--from %q is a local path, not a registry reference: did you mean docker-archive:%s (a docker save tarball) or oci:%s (an OCI layout directory)?", from, from, from)
	}
	return nil
}
