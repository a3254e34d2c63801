// Package otlp builds the OpenTelemetry SDK tracer provider with the OTLP exporter (HTTP or gRPC)
// that the config's "tracing" key asks for. It is apart from package tracing so that only the
// composition root links the exporters (and gRPC).
package otlp

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Config selects the exporter (see axoiso.TracingConfig, whose keys these are).
type Config struct {
	// Endpoint is the OTLP receiver's URL: http://host:4318 (OTLP/HTTP; the path defaults to
	// /v1/traces) or http://host:4317 (gRPC). https:// uses TLS, http:// does not.
	Endpoint string
	// Protocol is "http" (protobuf over HTTP, the default) or "grpc".
	Protocol string
	// SampleRatio is the share of new traces recorded, in (0, 1] (0: 1, every call). A call
	// that arrives with a traceparent follows its sampled flag instead.
	SampleRatio float64
	// Logger receives export failures (the SDK's error handler is process-wide).
	Logger *slog.Logger
}

// Check reports what is wrong with c, naming the config keys.
func (c Config) Check() error {
	u, err := url.Parse(c.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("tracing.otlp_endpoint: want an http:// or https:// URL with a host (e.g. http://127.0.0.1:4318), got %q", c.Endpoint)
	}
	switch c.Protocol {
	case "", "http", "grpc":
	default:
		return fmt.Errorf("tracing.protocol: want http or grpc, got %q", c.Protocol)
	}
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		return fmt.Errorf("tracing.sample_ratio: want a number in (0, 1], got %g", c.SampleRatio)
	}
	return nil
}

// NewProvider returns a tracer provider that batches spans to c's OTLP endpoint. The caller shuts
// it down (that flushes what is buffered). Nothing is dialled before the first export.
func NewProvider(ctx context.Context, c Config) (*sdktrace.TracerProvider, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	var (
		exp sdktrace.SpanExporter
		err error
	)
	if c.Protocol == "grpc" {
		exp, err = otlptracegrpc.New(ctx, otlptracegrpc.WithEndpointURL(c.Endpoint))
	} else {
		exp, err = otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(httpEndpoint(c.Endpoint)))
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: the OTLP exporter: %w", err)
	}
	ratio := c.SampleRatio
	if ratio == 0 {
		ratio = 1
	}
	if c.Logger != nil {
		setErrorHandler(c.Logger)
	}
	res := []attribute.KeyValue{attribute.String("service.name", "axoiso")}
	return sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
		sdktrace.WithResource(resourceOf(res)),
	), nil
}

// resourceOf is the SDK's default resource (OTEL_RESOURCE_ATTRIBUTES, the SDK's name and
// version) with attrs over it.
func resourceOf(attrs []attribute.KeyValue) *resource.Resource {
	r, err := resource.Merge(resource.Default(), resource.NewSchemaless(attrs...))
	if err != nil {
		return resource.NewSchemaless(attrs...)
	}
	return r
}

// httpEndpoint is u with the OTLP/HTTP traces path when u has no path: the exporter posts to the
// URL as given, and a collector's base URL (http://host:4318) is what operators write.
func httpEndpoint(u string) string {
	p, err := url.Parse(u)
	if err != nil || (p.Path != "" && p.Path != "/") {
		return u
	}
	p.Path = "/v1/traces"
	return p.String()
}

var errorHandlerOnce sync.Once

// setErrorHandler sends the SDK's errors (an unreachable collector) to log instead of the
// standard logger, once per process: the handler is global.
func setErrorHandler(log *slog.Logger) {
	errorHandlerOnce.Do(func() {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.LogAttrs(context.Background(), slog.LevelWarn, "tracing: export failed", slog.String("error", err.Error()))
		}))
	})
}
