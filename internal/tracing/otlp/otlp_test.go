package otlp

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/axocoatl/isolation/internal/tracing/otlptest"
)

func TestCheckNamesTheKey(t *testing.T) {
	tests := []struct {
		name string
		c    Config
		want string // "" for valid
	}{
		{"http", Config{Endpoint: "http://127.0.0.1:4318"}, ""},
		{"grpc with TLS", Config{Endpoint: "https://collector.example:4317", Protocol: "grpc", SampleRatio: 0.25}, ""},
		{"no scheme", Config{Endpoint: "127.0.0.1:4318"}, "tracing.otlp_endpoint"},
		{"other scheme", Config{Endpoint: "unix:///run/otel.sock"}, "tracing.otlp_endpoint"},
		{"no host", Config{Endpoint: "http://"}, "tracing.otlp_endpoint"},
		{"protocol", Config{Endpoint: "http://127.0.0.1:4318", Protocol: "thrift"}, "tracing.protocol"},
		{"ratio over 1", Config{Endpoint: "http://127.0.0.1:4318", SampleRatio: 2}, "tracing.sample_ratio"},
		{"negative ratio", Config{Endpoint: "http://127.0.0.1:4318", SampleRatio: -0.1}, "tracing.sample_ratio"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Check()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Check = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want+":")):
				t.Fatalf("Check = %v, want an error starting with %s", err, tc.want)
			}
		})
	}
}

// Both protocols deliver spans to a real receiver, with the resource naming the service.
func TestProviderExports(t *testing.T) {
	for _, proto := range []string{"http", "grpc"} {
		t.Run(proto, func(t *testing.T) {
			var rcv *otlptest.Receiver
			if proto == "grpc" {
				rcv = otlptest.NewGRPC(t)
			} else {
				rcv = otlptest.NewHTTP(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			tp, err := NewProvider(ctx, Config{Endpoint: rcv.URL, Protocol: proto})
			if err != nil {
				t.Fatal(err)
			}
			_, span := tp.Tracer("test").Start(ctx, "probe")
			span.End()
			if err := tp.Shutdown(ctx); err != nil {
				t.Fatalf("Shutdown (flush): %v", err)
			}
			spans := rcv.Spans()
			if len(spans) != 1 || spans[0].Name != "probe" || spans[0].Resource["service.name"] != "axoiso" {
				t.Fatalf("received %+v, want the span probe of the service axoiso", spans)
			}
		})
	}
}

// A ratio samples new traces: at 0.5 about half of 400 are kept.
func TestSampleRatio(t *testing.T) {
	rcv := otlptest.NewHTTP(t)
	ctx := context.Background()
	tp, err := NewProvider(ctx, Config{Endpoint: rcv.URL, SampleRatio: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	for range 400 {
		_, span := tp.Tracer("test").Start(ctx, "probe")
		span.End()
	}
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Trace ids are random: 400 draws at p=0.5 fall outside [120, 280] with probability < 1e-15.
	if n := len(rcv.Spans()); n < 120 || n > 280 {
		t.Fatalf("%d of 400 traces sampled at ratio 0.5", n)
	}
}

func TestHTTPEndpointPath(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:4318":                 "http://127.0.0.1:4318/v1/traces",
		"http://127.0.0.1:4318/":                "http://127.0.0.1:4318/v1/traces",
		"https://otel.example/custom/v1/traces": "https://otel.example/custom/v1/traces",
	} {
		if got := httpEndpoint(in); got != want {
			t.Errorf("httpEndpoint(%q) = %q, want %q", in, got, want)
		}
	}
}
