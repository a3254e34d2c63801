package testutil

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var cli struct {
	once sync.Once
	dir  string
	err  error
}

// BuiltCLI builds cmd/axoiso (with this test binary's build tags: BuildTags) and
// cmd/axoiso-guest (static, CGO_ENABLED=0) once per test process into a temporary directory and
// returns it; tests run the CLI as users do. repo is the repository's root relative to the
// test's package. The caller's TestMain calls RemoveBuiltCLI.
func BuiltCLI(t testing.TB, repo string) string {
	t.Helper()
	cli.once.Do(func() {
		if cli.dir, cli.err = os.MkdirTemp("", "axoiso-cli-"); cli.err != nil {
			return
		}
		_ = os.Chmod(cli.dir, 0o755)
		args := []string{"build", "-o", cli.dir + "/"}
		if BuildTags != "" {
			args = append(args, "-tags", BuildTags)
		}
		for _, b := range []struct {
			args []string
			env  string
		}{
			{append(args, "./cmd/axoiso"), ""},
			{[]string{"build", "-o", cli.dir + "/", "./cmd/axoiso-guest"}, "CGO_ENABLED=0"},
		} {
			cmd := exec.Command(goCommand(), b.args...)
			cmd.Dir = repo
			if b.env != "" {
				cmd.Env = append(os.Environ(), b.env)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				cli.err = errors.New("go " + b.args[len(b.args)-1] + ": " + err.Error() + "\n" + string(out))
				return
			}
		}
	})
	if cli.err != nil {
		t.Fatal(cli.err)
	}
	return cli.dir
}

// RemoveBuiltCLI removes what BuiltCLI built.
func RemoveBuiltCLI() {
	if cli.dir != "" {
		os.RemoveAll(cli.dir)
	}
}

// goCommand is the go command of the toolchain that built the test, else "go" from PATH.
func goCommand() string {
	//lint:ignore SA1019 tests run where the toolchain that built them is
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "go"
}
