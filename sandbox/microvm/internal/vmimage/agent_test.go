package vmimage

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A dynamically linked agent (what `go build` makes with cgo on) cannot run as the guest's
// /init, which has no dynamic loader: Prepare refuses it at once, saying how to build it,
// instead of preparing a guest whose kernel panics at boot. A static one passes the check.
func TestPrepareRefusesADynamicAgent(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("ELF binaries of this host")
	}
	dynamic, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1)")
	}
	b, err := os.ReadFile(dynamic)
	if err != nil {
		t.Fatal(err)
	}
	if elfInterpreter(b) == "" {
		t.Skipf("%s is static here", dynamic)
	}
	_, err = Prepare(context.Background(), Config{DataDir: t.TempDir(), Agent: dynamic})
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("Prepare with %s: %v, want a refusal naming CGO_ENABLED=0", dynamic, err)
	}

	static := filepath.Join(t.TempDir(), "agent")
	//lint:ignore SA1019 tests run where the toolchain that built them is
	cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", static, "github.com/axocoatl/isolation/cmd/axoiso-guest")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(static); err != nil || elfInterpreter(b) != "" {
		t.Fatalf("a CGO_ENABLED=0 agent asks for an interpreter: %q %v", elfInterpreter(b), err)
	}
}
