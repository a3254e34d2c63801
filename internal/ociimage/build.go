// Package ociimage turns an OCI image (in a registry, an OCI image layout or a `docker save`
// tarball) into an OCI runtime bundle: config.json + rootfs/, which the catalog reads as a
// container tool and the Oci tier runs.
package ociimage

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Config tunes Build. The zero value is usable.
type Config struct {
	// Replace lets Build swap out an existing dest (atomically: readers see the old bundle or
	// the new one, never a mix). Without it an existing dest is an ErrExists error.
	Replace bool
	// Insecure allows plain HTTP and unverified TLS to any registry. Without it only loopback
	// registries (127.0.0.0/8, ::1, localhost) may be plain HTTP.
	Insecure bool
	// Platform picks the image from a multi-platform index, "os/arch[/variant]"; default
	// linux/GOARCH of this binary.
	Platform string
	// Logger receives progress and notes (skipped device nodes, xattrs); default slog.Default().
	Logger *slog.Logger
	// Transport is the HTTP transport for registries (nil: go-containerregistry's default).
	// The loopback-only rule for plain HTTP applies on top of it.
	Transport http.RoundTripper
}

// Build creates the OCI runtime bundle dest (dest/config.json, dest/rootfs/) from the image ref
// (see ParseReference). The bundle is built in a temporary directory next to dest and renamed
// into place, so dest never holds a partial bundle; on any error, or when ctx is cancelled,
// everything Build created is removed. Layer entries that would escape the rootfs are refused
// with an error matching ErrUnsafeLayer. Ownership and device nodes are restored only when
// running as root. dest's parent directory must exist.
func Build(ctx context.Context, ref string, dest string, opts Config) (err error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	r, err := ParseReference(ref)
	if err != nil {
		return err
	}
	if dest == "" {
		return errors.New("ociimage: empty destination")
	}
	dest, err = filepath.Abs(dest)
	if err != nil {
		return err
	}
	platform, err := parsePlatform(opts.Platform)
	if err != nil {
		return err
	}
	start := time.Now()
	// The reference first: a wrong one is the error to report, whatever the destination holds.
	img, err := openImage(ctx, r, platform, opts)
	if err != nil {
		return err
	}
	if !opts.Replace {
		if _, err := os.Lstat(dest); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, dest)
		}
	}

	parent := filepath.Dir(dest)
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dest)+".partial-")
	if err != nil {
		return fmt.Errorf("creating the temporary bundle next to %s: %w", dest, err)
	}
	defer func() {
		if tmp != "" {
			if rerr := removeAll(tmp); rerr != nil {
				log.Error("removing the partial bundle", "dir", tmp, "err", rerr)
			}
		}
	}()
	// 0700: the rootfs may hold set-id binaries that unprivileged users must not reach.
	if err := os.Chmod(tmp, 0o700); err != nil {
		return err
	}
	cfg, err := unpackImage(ctx, img, filepath.Join(tmp, "rootfs"), log)
	if err != nil {
		return err
	}
	spec, err := runtimeSpec(filepath.Join(tmp, "rootfs"), cfg)
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(spec, "", "\t")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "config.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	if err := writeManifest(tmp, dest, cfg, opts.Replace); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	old, err := install(tmp, dest, opts.Replace)
	if err != nil {
		return err
	}
	tmp = old // the replaced bundle, if any, is removed by the deferred cleanup
	log.Info("bundle built", "ref", r.String(), "dest", dest, "elapsed", time.Since(start))
	return nil
}

func parsePlatform(s string) (v1.Platform, error) {
	if s == "" {
		return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, nil
	}
	p, err := v1.ParsePlatform(s)
	if err != nil || p.OS == "" || p.Architecture == "" {
		return v1.Platform{}, fmt.Errorf("%w: platform %q is not os/arch[/variant]", ErrBadReference, s)
	}
	return *p, nil
}

// openImage resolves r to one image for platform.
func openImage(ctx context.Context, r Reference, platform v1.Platform, opts Config) (v1.Image, error) {
	switch r.Transport {
	case TransportDocker:
		var nopts []name.Option
		if opts.Insecure {
			nopts = append(nopts, name.Insecure)
		}
		nref, err := name.ParseReference(r.Name, nopts...)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadReference, err)
		}
		img, err := remote.Image(nref,
			remote.WithContext(ctx),
			remote.WithPlatform(platform),
			remote.WithAuthFromKeychain(authn.DefaultKeychain),
			remote.WithTransport(&guardTransport{base: baseTransport(opts), insecure: opts.Insecure}))
		if err != nil {
			return nil, fmt.Errorf("fetching %s: %w", r, err)
		}
		return img, nil
	case TransportOCI:
		return openLayout(r, platform)
	case TransportDockerArchive:
		var tag *name.Tag
		if r.Name != "" {
			t, err := name.NewTag(r.Name)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrBadReference, err)
			}
			tag = &t
		}
		if _, err := os.Stat(r.Path); err != nil {
			return nil, fmt.Errorf("opening %s: %w", r, err)
		}
		img, err := tarball.ImageFromPath(r.Path, tag)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidImage, r, err)
		}
		return img, nil
	}
	return nil, fmt.Errorf("%w: unknown transport %q", ErrBadReference, r.Transport)
}

const refNameAnnotation = "org.opencontainers.image.ref.name"

// openLayout picks the manifest of an OCI image layout whose ref.name annotation is r.Name, or
// the only one when r.Name is empty (skopeo's rule), then the platform's image if it is an index.
func openLayout(r Reference, platform v1.Platform) (v1.Image, error) {
	lp, err := layout.FromPath(r.Path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: not an OCI image layout: %v", ErrInvalidImage, r, err)
	}
	idx, err := lp.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidImage, r, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: index.json: %v", ErrInvalidImage, r, err)
	}
	var picked []v1.Descriptor
	for _, d := range im.Manifests {
		if r.Name == "" || d.Annotations[refNameAnnotation] == r.Name {
			picked = append(picked, d)
		}
	}
	switch {
	case len(picked) == 0 && r.Name != "":
		return nil, fmt.Errorf("%w: %s: no manifest with %s=%q in index.json", ErrInvalidImage, r, refNameAnnotation, r.Name)
	case len(picked) == 0:
		return nil, fmt.Errorf("%w: %s: index.json lists no manifest", ErrInvalidImage, r)
	case len(picked) > 1:
		return nil, fmt.Errorf("%w: %s: index.json lists %d manifests; name one as oci:DIR:REF", ErrInvalidImage, r, len(picked))
	}
	d := picked[0]
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalidImage, r, err)
		}
		return imageForPlatform(child, platform, r)
	}
	if !d.MediaType.IsImage() {
		return nil, fmt.Errorf("%w: %s: manifest media type %q is not an image", ErrInvalidImage, r, d.MediaType)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidImage, r, err)
	}
	return img, nil
}

func imageForPlatform(idx v1.ImageIndex, platform v1.Platform, r Reference) (v1.Image, error) {
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalidImage, r, err)
	}
	var have []string
	for _, d := range im.Manifests {
		if d.Platform == nil || !d.MediaType.IsImage() {
			continue
		}
		if d.Platform.Satisfies(platform) {
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrInvalidImage, r, err)
			}
			return img, nil
		}
		have = append(have, d.Platform.String())
	}
	return nil, fmt.Errorf("%w: %s: no image for platform %s (index has %s)", ErrInvalidImage, r, platform.String(), strings.Join(have, ", "))
}

// unpackImage unpacks img's layers in order into rootfs (created here, 0755, owned by root
// when root, with an epoch mtime like umoci's) and returns the image config. Each layer's
// uncompressed stream is checked against the config's diff_id.
func unpackImage(ctx context.Context, img v1.Image, rootfs string, log *slog.Logger) (*v1.ConfigFile, error) {
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%w: reading the image config: %v", ErrInvalidImage, err)
	}
	if cfg.OS != "" && cfg.OS != "linux" {
		return nil, fmt.Errorf("%w: image is for %q, not linux", ErrInvalidImage, cfg.OS)
	}
	if cfg.RootFS.Type != "" && cfg.RootFS.Type != "layers" {
		return nil, fmt.Errorf("%w: unsupported rootfs.type %q", ErrInvalidImage, cfg.RootFS.Type)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("%w: listing layers: %v", ErrInvalidImage, err)
	}
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(rootfs, 0o755); err != nil { // independent of the umask
		return nil, err
	}
	epoch := time.Unix(0, 0)
	if err := os.Chtimes(rootfs, epoch, epoch); err != nil {
		return nil, err
	}
	u, err := newUnpacker(rootfs, log)
	if err != nil {
		return nil, err
	}
	defer u.Close()
	for i, l := range layers {
		if err := unpackLayer(ctx, u, l); err != nil {
			return nil, fmt.Errorf("layer %d of %d: %w", i+1, len(layers), err)
		}
	}
	if err := u.finish(); err != nil {
		return nil, err
	}
	if u.skippedDevices > 0 {
		log.Warn("device nodes were not created (not root)", "count", u.skippedDevices)
	}
	return cfg, nil
}

func unpackLayer(ctx context.Context, u *unpacker, l v1.Layer) error {
	want, err := l.DiffID()
	if err != nil {
		return fmt.Errorf("%w: diff_id: %v", ErrInvalidImage, err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("opening layer %s: %w", want, err)
	}
	defer rc.Close()
	h := sha256.New()
	r := io.TeeReader(&ctxReader{ctx: ctx, r: rc}, h)
	if err := u.layer(ctx, r); err != nil {
		return err
	}
	// Tar writers may pad past the end-of-archive marker; the diff_id covers those bytes too.
	if _, err := io.Copy(io.Discard, r); err != nil {
		return fmt.Errorf("reading layer %s: %w", want, err)
	}
	if want.Algorithm == "sha256" {
		if got := hex.EncodeToString(h.Sum(nil)); got != want.Hex {
			return fmt.Errorf("%w: layer diff_id mismatch: content is sha256:%s, config says %s", ErrInvalidImage, got, want)
		}
	}
	return nil
}

// ctxReader stops a long layer read when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func baseTransport(opts Config) http.RoundTripper {
	if opts.Transport != nil {
		return opts.Transport
	}
	t := remote.DefaultTransport.(*http.Transport).Clone()
	if opts.Insecure {
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for with Config.Insecure
	}
	return t
}

// guardTransport refuses plain-HTTP requests except to loopback hosts (or with Insecure).
// go-containerregistry would also fall back to HTTP for RFC 1918 addresses; this keeps that
// from happening silently.
type guardTransport struct {
	base     http.RoundTripper
	insecure bool
}

func (g *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && !g.insecure && !isLoopback(req.URL.Hostname()) {
		return nil, fmt.Errorf("plain HTTP to %s refused: only loopback registries may be insecure unless Insecure is set", req.URL.Host)
	}
	return g.base.RoundTrip(req)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// removeAll removes a bundle tree. Unprivileged, a directory the image made read-only (0555)
// blocks removal of its entries, so on failure directories are made writable and it retries.
func removeAll(p string) error {
	err := os.RemoveAll(p)
	if err == nil || os.Geteuid() == 0 {
		return err
	}
	_ = filepath.WalkDir(p, func(q string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(q, 0o700)
		}
		return nil
	})
	return os.RemoveAll(p)
}
