package tracing

import (
	"context"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func TestExtractInject(t *testing.T) {
	tests := []struct {
		name, parent, state string
		valid               bool
	}{
		{"sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=a,other=b", true},
		{"not sampled", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "", true},
		{"empty", "", "", false},
		{"zero trace id", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "", false},
		{"short", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902-01", "", false},
		{"version ff", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "", false},
		{"not hex", "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := Extract(context.Background(), tc.parent, tc.state)
			sc := trace.SpanContextFromContext(ctx)
			if sc.IsValid() != tc.valid {
				t.Fatalf("valid = %v, want %v", sc.IsValid(), tc.valid)
			}
			p, s := Inject(ctx)
			if !tc.valid {
				if p != "" || s != "" {
					t.Fatalf("Inject of no span = %q, %q", p, s)
				}
				return
			}
			if p != tc.parent || s != tc.state {
				t.Fatalf("round trip = %q, %q; want %q, %q", p, s, tc.parent, tc.state)
			}
		})
	}
}

// Header values are the caller's bytes: whatever they are, Extract yields no span or a valid
// one that Inject writes back with the same ids.
func FuzzExtract(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=a")
	f.Add("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra", "a=1,,b=2")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, parent, state string) {
		ctx := Extract(context.Background(), parent, state)
		sc := trace.SpanContextFromContext(ctx)
		p, _ := Inject(ctx)
		if !sc.IsValid() {
			if p != "" {
				t.Fatalf("no valid span but Inject = %q", p)
			}
			return
		}
		if !strings.Contains(p, sc.TraceID().String()) || !strings.Contains(p, sc.SpanID().String()) {
			t.Fatalf("Inject = %q, span %s/%s", p, sc.TraceID(), sc.SpanID())
		}
	})
}
