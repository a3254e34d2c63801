package ociimage

import (
	"errors"
	"testing"
)

func TestParseReference(t *testing.T) {
	ok := []struct {
		in   string
		want Reference
	}{
		{"docker://127.0.0.1:5000/repo:tag", Reference{Transport: TransportDocker, Name: "127.0.0.1:5000/repo:tag"}},
		{"docker://alpine", Reference{Transport: TransportDocker, Name: "alpine"}},
		{"alpine:3.20", Reference{Transport: TransportDocker, Name: "alpine:3.20"}},
		{"localhost:5000/a/b@sha256:" + sixtyFourHex, Reference{Transport: TransportDocker, Name: "localhost:5000/a/b@sha256:" + sixtyFourHex}},
		{"oci:/tmp/layout", Reference{Transport: TransportOCI, Path: "/tmp/layout"}},
		{"oci:rel/dir:v1.0", Reference{Transport: TransportOCI, Path: "rel/dir", Name: "v1.0"}},
		{"oci:/l:example.com/app:1.0", Reference{Transport: TransportOCI, Path: "/l", Name: "example.com/app:1.0"}},
		{"docker-archive:/tmp/img.tar", Reference{Transport: TransportDockerArchive, Path: "/tmp/img.tar"}},
		{"docker-archive:img.tar:repo/app:v2", Reference{Transport: TransportDockerArchive, Path: "img.tar", Name: "repo/app:v2"}},
	}
	for _, c := range ok {
		got, err := ParseReference(c.in)
		if err != nil {
			t.Errorf("ParseReference(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("ParseReference(%q) = %+v, want %+v", c.in, got, c.want)
		}
	}
	bad := []string{
		"",
		"docker://",
		"docker:alpine",
		"docker://http://host/repo",
		"docker://UPPER/Case",
		"docker://host/repo:bad tag",
		"repo::tag",
		"oci:",
		"oci::tag",
		"oci:/dir:bad tag!",
		"oci:/dir:-leading",
		"docker-archive:",
		"docker-archive:f.tar:@0",
		"docker-archive:f.tar:repo@sha256:" + sixtyFourHex,
		"docker-archive:f.tar:repo",
		"dir:/some/dir",
		"containers-storage:foo",
		"oci-archive:/x.tar",
		"alpine\n",
		"docker://host/repo:tag\x00",
	}
	for _, in := range bad {
		if got, err := ParseReference(in); !errors.Is(err, ErrBadReference) {
			t.Errorf("ParseReference(%q) = %+v, %v; want ErrBadReference", in, got, err)
		}
	}
}

const sixtyFourHex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
