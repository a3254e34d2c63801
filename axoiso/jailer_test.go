package axoiso

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// The vm.jailer configuration reaches the Firecracker driver: on by default as root where a
// jailer exists (beside firecracker first), off when asked or when no jailer exists, and "on"
// without a jailer never runs Firecracker unjailed.
func TestJailerConfig(t *testing.T) {
	dir := t.TempDir()
	fc := filepath.Join(dir, "firecracker")
	jb := filepath.Join(dir, "jailer")
	for _, f := range []string{fc, jb} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	inPath := func(found map[string]string) func(string) (string, error) {
		return func(n string) (string, error) {
			if p, ok := found[n]; ok {
				return p, nil
			}
			return "", errors.New("not found")
		}
	}
	cases := []struct {
		name    string
		json    string
		found   map[string]string
		euid    int
		want    bool   // a jailer is configured
		wantBin string // its binary
		wantUID int
		wantErr bool
	}{
		{"auto as root", `{}`, map[string]string{"firecracker": fc}, 0, true, jb, DefaultJailerID, false},
		{"auto, not root", `{}`, map[string]string{"firecracker": fc}, 1000, false, "", 0, false},
		{"off", `{"jailer":{"mode":"off"}}`, map[string]string{"firecracker": fc}, 0, false, "", 0, false},
		{"no firecracker", `{}`, nil, 0, false, "", 0, false},
		{"explicit", `{"firecracker":"` + fc + `","jailer":{"mode":"on","binary":"/opt/fc/jailer","uid":4000,"gid":4000,"chroot_base_dir":"/srv/j"}}`, nil, 1000, true, "/opt/fc/jailer", 4000, false},
		{"on without a jailer", `{"jailer":{"mode":"on"}}`, map[string]string{}, 0, true, "/nonexistent/jailer", DefaultJailerID, false},
		{"bad mode", `{"jailer":{"mode":"yes"}}`, nil, 0, false, "", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var c VMConfig
			if err := json.Unmarshal([]byte(tc.json), &c); err != nil {
				t.Fatal(err)
			}
			j, err := c.jailer(inPath(tc.found), tc.euid)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if (j != nil) != tc.want {
				t.Fatalf("jailer = %+v, want one: %v", j, tc.want)
			}
			if j != nil && (j.Binary != tc.wantBin || j.UID != tc.wantUID || j.GID != tc.wantUID) {
				t.Errorf("jailer = %+v, want binary %s uid/gid %d", j, tc.wantBin, tc.wantUID)
			}
		})
	}
}
