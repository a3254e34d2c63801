package ociimage

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"

	"github.com/google/go-containerregistry/pkg/name"
)

// Transport names where an image reference is looked up, in skopeo's syntax.
type Transport string

// The supported transports.
const (
	// TransportDocker is a registry: docker://HOST/REPO[:TAG|@DIGEST]; a bare reference means the same.
	TransportDocker Transport = "docker"
	// TransportOCI is an OCI image layout directory: oci:DIR[:REF].
	TransportOCI Transport = "oci"
	// TransportDockerArchive is a `docker save` tarball: docker-archive:FILE[:REPO:TAG].
	TransportDockerArchive Transport = "docker-archive"
)

// Reference is a parsed image reference. It is a plain value; ParseReference is its only
// constructor that checks it.
type Reference struct {
	Transport Transport
	// Path is the layout directory (oci) or the tarball (docker-archive); empty for docker.
	Path string
	// Name is, for docker, the image reference as given ("HOST/REPO:TAG"); for oci, the value of
	// the org.opencontainers.image.ref.name annotation to pick from index.json ("" = the only
	// image); for docker-archive, the REPO:TAG to pick from manifest.json ("" = the only image).
	Name string
}

// String renders the reference in the syntax ParseReference reads.
func (r Reference) String() string {
	switch r.Transport {
	case TransportDocker:
		return "docker://" + r.Name
	default:
		s := string(r.Transport) + ":" + r.Path
		if r.Name != "" {
			s += ":" + r.Name
		}
		return s
	}
}

// Transports skopeo knows that Build does not read; named so the error says so plainly instead of
// taking "dir:foo" for a registry host called "dir".
var unsupportedTransports = []string{"oci-archive", "dir", "docker-daemon", "containers-storage", "ostree", "sif", "tarball"}

// ociRefName is the grammar of the org.opencontainers.image.ref.name annotation (image-spec
// annotations.md), which is what oci:DIR:REF selects by.
var ociRefName = regexp.MustCompile(`^[A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*(/[A-Za-z0-9]+(([-._:@+]|--)[A-Za-z0-9]+)*)*$`)

// ParseReference parses REF in skopeo's transport syntax: docker://HOST/REPO:TAG (or a bare
// HOST/REPO:TAG), oci:DIR[:REF] and docker-archive:FILE[:REPO:TAG]. A malformed reference is an
// error matching ErrBadReference; nothing is opened or fetched.
func ParseReference(ref string) (Reference, error) {
	bad := func(format string, args ...any) (Reference, error) {
		return Reference{}, fmt.Errorf("%w: %q: %s", ErrBadReference, truncate(ref, 200), fmt.Sprintf(format, args...))
	}
	if ref == "" {
		return bad("empty reference")
	}
	if len(ref) > 4096 {
		return bad("longer than 4096 bytes")
	}
	for _, r := range ref {
		if r == unicode.ReplacementChar || unicode.IsControl(r) || unicode.IsSpace(r) {
			return bad("contains a control, space or invalid UTF-8 character")
		}
	}
	switch {
	case strings.HasPrefix(ref, "docker://"):
		return parseDocker(ref, strings.TrimPrefix(ref, "docker://"))
	case strings.HasPrefix(ref, "docker:"):
		return bad("the docker transport is written docker://HOST/REPO:TAG")
	case strings.HasPrefix(ref, "oci:"):
		dir, image, _ := strings.Cut(strings.TrimPrefix(ref, "oci:"), ":")
		if dir == "" {
			return bad("oci: needs a layout directory: oci:DIR[:REF]")
		}
		if image != "" && !ociRefName.MatchString(image) {
			return bad("%q is not a valid org.opencontainers.image.ref.name", image)
		}
		return Reference{Transport: TransportOCI, Path: dir, Name: image}, nil
	case strings.HasPrefix(ref, "docker-archive:"):
		file, image, _ := strings.Cut(strings.TrimPrefix(ref, "docker-archive:"), ":")
		if file == "" {
			return bad("docker-archive: needs a file: docker-archive:FILE[:REPO:TAG]")
		}
		if image != "" {
			if strings.HasPrefix(image, "@") {
				return bad("selecting an archive's image by index (@N) is not supported; use REPO:TAG")
			}
			if strings.Contains(image, "@") {
				return bad("a docker-archive reference names REPO:TAG, not a digest")
			}
			if i := strings.LastIndexByte(image, '/'); !strings.Contains(image[i+1:], ":") {
				return bad("%q has no tag: a docker-archive reference names REPO:TAG", image)
			}
			tag, err := name.NewTag(image)
			if err != nil {
				return bad("%q is not REPO:TAG: %v", image, err)
			}
			image = tag.String()
		}
		return Reference{Transport: TransportDockerArchive, Path: file, Name: image}, nil
	}
	if i := strings.IndexByte(ref, ':'); i > 0 {
		for _, t := range unsupportedTransports {
			if ref[:i] == t {
				return bad("transport %q is not supported (use docker://, oci: or docker-archive:)", t)
			}
		}
	}
	return parseDocker(ref, ref)
}

func parseDocker(ref, s string) (Reference, error) {
	if s == "" {
		return Reference{}, fmt.Errorf("%w: %q: docker:// needs HOST/REPO[:TAG]", ErrBadReference, ref)
	}
	if strings.Contains(s, "://") {
		return Reference{}, fmt.Errorf("%w: %q: a registry reference has no scheme of its own", ErrBadReference, truncate(ref, 200))
	}
	if _, err := name.ParseReference(s); err != nil {
		return Reference{}, fmt.Errorf("%w: %q: %v", ErrBadReference, truncate(ref, 200), err)
	}
	return Reference{Transport: TransportDocker, Name: s}, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// The error classes of this package; every error Build returns for one of these reasons matches
// it with errors.Is.
var (
	// ErrBadReference: the image reference is malformed or names an unsupported transport.
	ErrBadReference = errors.New("invalid image reference")
	// ErrUnsafeLayer: a layer entry would escape the rootfs (absolute name, "..", a write through a
	// symlink that leaves the rootfs, a hard link to outside) or is otherwise refused.
	ErrUnsafeLayer = errors.New("unsafe layer entry")
	// ErrInvalidImage: the image is malformed (missing platform, diff_id mismatch, bad config, bad
	// tar, unknown entry type, user not resolvable).
	ErrInvalidImage = errors.New("invalid image")
	// ErrExists: the destination exists and Config.Replace is false.
	ErrExists = errors.New("bundle destination exists")
)
