package wire

import (
	"errors"
	"strings"
	"testing"

	"github.com/axocoatl/isolation"
)

const dig = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestRunSubject(t *testing.T) {
	for _, c := range []struct {
		tier   isolation.Tier
		tool   string
		digest string
		want   string // "" : refused
	}{
		{isolation.TierWasm, "hello-wasm", dig, "axoiso.v1.run.Wasmtime.hello-wasm." + dig},
		{isolation.TierOCI, "a.b_c", dig, "axoiso.v1.run.Oci.a~b_c." + dig},
		{isolation.TierMicroVM, "x", dig, "axoiso.v1.run.Firecracker.x." + dig},
		{isolation.TierWasm, "a.*", dig, ""},
		{isolation.TierWasm, "a>", dig, ""},
		{isolation.TierWasm, "a b", dig, ""},
		{isolation.TierWasm, "a..b", dig, ""},
		{isolation.TierWasm, "", dig, ""},
		{isolation.TierWasm, "A", dig, ""},
		{isolation.TierWasm, "ok", strings.ToUpper(dig), ""},
		{isolation.TierWasm, "ok", dig[:63], ""},
		{isolation.TierWasm, "ok", dig[:63] + ".", ""},
		{isolation.TierWasm, "ok", dig[:63] + "*", ""},
		{isolation.Tier(9), "ok", dig, ""},
	} {
		got, err := RunSubject(c.tier, c.tool, c.digest)
		if c.want == "" {
			if err == nil || !errors.Is(err, ErrBadToken) {
				t.Errorf("RunSubject(%v, %q, %q) = %q, %v: want ErrBadToken", c.tier, c.tool, c.digest, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("RunSubject(%v, %q) = %q, %v; want %q", c.tier, c.tool, got, err, c.want)
			continue
		}
		tier, tool, d, err := ParseRunSubject(got)
		if err != nil || tier != c.tier || tool != c.tool || d != c.digest {
			t.Errorf("ParseRunSubject(%q) = %v %q %q %v", got, tier, tool, d, err)
		}
	}
	for _, bad := range []string{"", "axoiso.v1.run.", "axoiso.v1.run.Oci.x", "axoiso.v1.run.Oci.x." + dig + ".y",
		"axoiso.v1.run.Nope.x." + dig, "axoiso.v1.run.Oci.X." + dig, "axoiso.v1.run.Oci.*." + dig, "axoiso.v2.run.Oci.x." + dig} {
		if _, _, _, err := ParseRunSubject(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("ParseRunSubject(%q): %v, want ErrBadToken", bad, err)
		}
	}
}

func TestCancelSubject(t *testing.T) {
	if s, err := CancelSubject("3f0c-AB_9"); err != nil || s != "axoiso.v1.cancel.3f0c-AB_9" {
		t.Errorf("got %q %v", s, err)
	}
	for _, bad := range []string{"", "a.b", "a*", "a>", "a b", strings.Repeat("a", 65)} {
		if _, err := CancelSubject(bad); !errors.Is(err, ErrBadToken) {
			t.Errorf("CancelSubject(%q): %v, want ErrBadToken", bad, err)
		}
	}
}

// TestErrorRoundTrip: every class crosses the wire as itself.
func TestErrorRoundTrip(t *testing.T) {
	for _, o := range isolation.Outcomes() {
		if o.Class == nil {
			continue
		}
		in := &isolation.Error{Kind: o.Class, Tool: "t", Tier: isolation.TierOCI, HasTier: true, Message: "m", ExitCode: 3, Stderr: "e"}
		out := EncodeError(in).Decode("t")
		var ie *isolation.Error
		if !errors.Is(out, o.Class) || !errors.As(out, &ie) || ie.Tier != isolation.TierOCI || ie.ExitCode != 3 || ie.Stderr != "e" || ie.Message != "m" {
			t.Errorf("%s: %#v", o.Kind, out)
		}
	}
	if k := isolation.KindName(EncodeError(errors.New("boom")).Decode("t")); k != isolation.KindInternal {
		t.Errorf("untyped: %s", k)
	}
	if k := isolation.KindName((&Error{Kind: isolation.KindCanceled}).Decode("t")); k != isolation.KindCanceled {
		t.Errorf("canceled: %s", k)
	}
}

// FuzzParseRunSubject: whatever the subject, parsing never panics, and what it accepts builds
// back to the same subject (no token can smuggle a '.', '*' or '>').
func FuzzParseRunSubject(f *testing.F) {
	for _, s := range []string{"axoiso.v1.run.Oci.a~b." + dig, "axoiso.v1.run.Wasmtime.x." + dig, "axoiso.v1.run.Oci.*.>", "", "axoiso.v1.run.Oci.~." + dig} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tier, tool, d, err := ParseRunSubject(s)
		if err != nil {
			return
		}
		back, err := RunSubject(tier, tool, d)
		if err != nil || back != s {
			t.Fatalf("%q parsed to %v %q %q, builds back to %q %v", s, tier, tool, d, back, err)
		}
		if strings.ContainsAny(tool, "*> \t") {
			t.Fatalf("tool %q", tool)
		}
	})
}
