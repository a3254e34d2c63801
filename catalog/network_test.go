package catalog_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
)

func TestNetworkManifest(t *testing.T) {
	for _, tc := range []struct {
		name, network string
		want          string // the patterns, or the error's text
		ok            bool
	}{
		{"absent", ``, "", true},
		{"false", `,"network":false`, "", true},
		{"null", `,"network":null`, "", true},
		{"egress", `,"network":{"egress":["API.github.com:443","*.pypi.org:443","203.0.113.0/24:5432/tcp"]}`, "api.github.com:443 *.pypi.org:443 203.0.113.0/24:5432/tcp", true},
		{"empty egress", `,"network":{"egress":[]}`, "", true},
		{"true refused", `,"network":true`, `"network": true is no longer a grant`, false},
		{"true says what to write", `,"network":true`, `{"egress": ["api.example.com:443"]}`, false},
		{"name without port", `,"network":{"egress":["api.github.com"]}`, "egress[0]: invalid egress pattern \"api.github.com\": port", false},
		{"not a string", `,"network":{"egress":[443]}`, "egress[0] is not a string", false},
		{"unknown key", `,"network":{"egress":[],"ingress":[]}`, "unknown field", false},
		{"a string", `,"network":"yes"`, "want false or", false},
		{"too many", `,"network":{"egress":[` + strings.Repeat(`"a.b.com:1",`, 256) + `"a.b.com:1"]}`, "at most 256", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			write(t, filepath.Join(root, "net/tool.json"), `{"runtime":"Python","entrypoint":"main.py"`+tc.network+`}`)
			write(t, filepath.Join(root, "net/main.py"), "print(1)")
			c, err := catalog.Open(root)
			if err != nil {
				t.Fatal(err)
			}
			tool, err := c.Get("net")
			if !tc.ok {
				if !errors.Is(err, isolation.ErrInvalidTool) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Get = %v, want invalid tool saying %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range tool.Network.Egress {
				got = append(got, p.String())
			}
			if strings.Join(got, " ") != tc.want {
				t.Fatalf("egress %v, want %s", got, tc.want)
			}
		})
	}
}
