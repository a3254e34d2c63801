package sandbox

import (
	"math"
	"reflect"
	"testing"
	"time"
)

func TestWithDefaultsBoundsLimits(t *testing.T) {
	for _, tt := range []struct {
		name string
		in   Limits
		want Limits
	}{
		{"zero", Limits{}, Limits{Timeout: DefaultTimeout, MaxOutputBytes: DefaultMaxOutputBytes, MaxStderrBytes: DefaultMaxStderrBytes}},
		{"ordinary", Limits{Timeout: time.Second, MemoryMB: 300, MaxOutputBytes: 10, MaxStderrBytes: 20},
			Limits{Timeout: time.Second, MemoryMB: 300, MaxOutputBytes: 10, MaxStderrBytes: 20}},
		{"huge", Limits{Timeout: time.Second, MemoryMB: math.MaxInt, MaxOutputBytes: math.MaxInt64, MaxStderrBytes: math.MaxInt},
			Limits{Timeout: time.Second, MemoryMB: MaxMemoryMB, MaxOutputBytes: MaxOutputBytesLimit, MaxStderrBytes: MaxStderrBytesLimit}},
		{"negative memory is the tier's default", Limits{Timeout: time.Second, MemoryMB: -5},
			Limits{Timeout: time.Second, MaxOutputBytes: DefaultMaxOutputBytes, MaxStderrBytes: DefaultMaxStderrBytes}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.WithDefaults(); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("WithDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}
