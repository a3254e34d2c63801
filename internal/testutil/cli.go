package testutil

import (
	"errors"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/axocoatl/isolation/internal/wasmbuild"
)

var cli struct {
	once sync.Once
	dir  string
	err  error
}

// BuiltCLI builds cmd/axoiso (with this test binary's build tags: BuildTags) and
// cmd/axoiso-guest (static, CGO_ENABLED=0) once per test process into a temporary directory and
// returns it; tests run the CLI as users do. repo is the repository's root relative to the
// test's package. The caller's TestMain runs its tests with RunRemovingBuiltCLI.
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
			cmd := exec.Command(wasmbuild.GoCommand(), b.args...)
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

// RunRemovingBuiltCLI runs m's tests and then removes what BuiltCLI built: a TestMain's
// os.Exit(testutil.RunRemovingBuiltCLI(m)).
func RunRemovingBuiltCLI(m *testing.M) int {
	code := m.Run()
	if cli.dir != "" {
		os.RemoveAll(cli.dir)
	}
	return code
}
