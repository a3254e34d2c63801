package bundle

import (
	"errors"
	"strings"
	"testing"
)

func TestScriptArgs(t *testing.T) {
	args, err := ScriptArgs("Python", "src/main.py")
	if err != nil || strings.Join(args, " ") != "python3 /axocoatl/tool/src/main.py" {
		t.Fatalf("%v %v", args, err)
	}
	for _, bad := range [][2]string{{"Shell", "../x.sh"}, {"Shell", "/etc/x"}, {"WasmCompiled", "x"}} {
		if _, err := ScriptArgs(bad[0], bad[1]); err == nil {
			t.Errorf("ScriptArgs(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

func TestScriptEnv(t *testing.T) {
	env := ScriptEnv([]string{"PATH=/opt/py/bin", "PYTHONPATH=/opt/lib", "LANG=de_DE.UTF-8"})
	got := strings.Join(env, " ")
	for _, want := range []string{"PATH=/opt/py/bin", "PYTHONPATH=/opt/lib", "LANG=de_DE.UTF-8", "HOME=/tmp", "PYTHONDONTWRITEBYTECODE=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("env %q lacks %q", got, want)
		}
	}
	if strings.Count(got, "PATH=/usr") != 0 || strings.Count(got, "LANG=") != 1 {
		t.Errorf("the image's PATH or LANG was overridden: %q", got)
	}
}

func TestParseConfig(t *testing.T) {
	ok := `{"process":{"args":["/bin/sh","-c","x"],"env":["A=1"],"cwd":"/w","user":{"uid":7,"gid":8,"additionalGids":[9]}},"root":{"path":"rootfs"}}`
	root, p, err := ParseConfig([]byte(ok), "/b")
	if err != nil || root != "/b/rootfs" || p.Cwd != "/w" || p.UID != 7 || p.GID != 8 || len(p.AdditionalGids) != 1 || p.Env[0] != "A=1" {
		t.Fatalf("%q %+v %v", root, p, err)
	}
	_, p, err = ParseConfig([]byte(`{"process":{"args":["x"]},"root":{"path":"/b/r"}}`), "/b")
	if err != nil || p.Cwd != "/" || p.Env[0] != DefaultPath {
		t.Fatalf("defaults: %+v %v", p, err)
	}
	for name, raw := range map[string]string{
		"no args":       `{"process":{"args":[]},"root":{"path":"rootfs"}}`,
		"no root":       `{"process":{"args":["x"]}}`,
		"root outside":  `{"process":{"args":["x"]},"root":{"path":"/etc"}}`,
		"root escapes":  `{"process":{"args":["x"]},"root":{"path":"../x"}}`,
		"relative cwd":  `{"process":{"args":["x"],"cwd":"w"},"root":{"path":"rootfs"}}`,
		"nul":           `{"process":{"args":["x\u0000y"]},"root":{"path":"rootfs"}}`,
		"huge":          `{"process":{"args":["` + strings.Repeat("a", MaxArgBytes+1) + `"]},"root":{"path":"rootfs"}}`,
		"not json":      `{`,
		"wrong type":    `{"process":{"args":"x"},"root":{"path":"rootfs"}}`,
		"negative user": `{"process":{"args":["x"],"user":{"uid":-1}},"root":{"path":"rootfs"}}`,
	} {
		if _, _, err := ParseConfig([]byte(raw), "/b"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	p = Process{UID: MaxID + 1}
	if err := p.CheckIDs(); err == nil {
		t.Error("uid over MaxID accepted")
	}
	if err := Error("/b", "config.json", errors.New("x")); err == nil || !strings.Contains(err.Error(), "config.json") {
		t.Errorf("Error: %v", err)
	}
}

// FuzzParseConfig: config.json is untrusted bytes; whatever they hold, parsing returns a root
// inside the bundle and a bounded process, or an error.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"process":{"args":["/bin/sh","-c","x"],"env":["A=1"],"cwd":"/w","user":{"uid":7,"gid":8}},"root":{"path":"rootfs"}}`))
	f.Add([]byte(`{"process":{"args":["x"]},"root":{"path":"/b/../etc"}}`))
	f.Add([]byte(`{"process":{"args":["x"],"cwd":"/../.."},"root":{"path":"./r/../../x"}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		root, p, err := ParseConfig(raw, "/b")
		if err != nil {
			return
		}
		if root != "/b" && !strings.HasPrefix(root, "/b/") {
			t.Fatalf("root %q outside the bundle", root)
		}
		if len(p.Args) == 0 || !strings.HasPrefix(p.Cwd, "/") || len(p.Env) == 0 {
			t.Fatalf("process %+v", p)
		}
		if CheckArgs(p.Args, p.Env) != nil {
			t.Fatalf("unbounded process accepted")
		}
	})
}
