// Command digest is the program inside the example image tool (examples/image): for
// {"text": "..."} it writes the text's SHA-256, its length in bytes and words, and what the
// program saw of its sandbox (uid, gid, working directory, host name, where it could write) to
// /axocoatl/output.json. Any program in any language works the same way in an image; this one
// is a static Go binary so that the image needs nothing else (no shell, no libc).
//
// build-layout.sh builds it (CGO_ENABLED=0) into an OCI image layout whose config names it as
// the entrypoint; `axoiso bundle` turns that image into a tool.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strings"
)

type input struct {
	Text string `json:"text"`
}

type sandboxView struct {
	UID      int      `json:"uid"`
	GID      int      `json:"gid"`
	Cwd      string   `json:"cwd"`
	Hostname string   `json:"hostname"`
	Writable []string `json:"writable"`
}

type output struct {
	SHA256  string      `json:"sha256"`
	Bytes   int         `json:"bytes"`
	Words   int         `json:"words"`
	Sandbox sandboxView `json:"sandbox"`
}

func main() {
	b, err := os.ReadFile("/axocoatl/input.json")
	if err != nil {
		fail(err)
	}
	var in input
	if err := json.Unmarshal(b, &in); err != nil {
		fail(err)
	}
	sum := sha256.Sum256([]byte(in.Text))
	out := output{SHA256: hex.EncodeToString(sum[:]), Bytes: len(in.Text), Words: len(strings.Fields(in.Text)), Sandbox: look()}
	fmt.Fprintf(os.Stderr, "digest: %d bytes\n", out.Bytes)
	b, _ = json.Marshal(out)
	if err := os.WriteFile("/axocoatl/output.json", b, 0o644); err != nil {
		fail(err)
	}
	fmt.Println("digest: done")
}

// look reports who the program runs as and which of the usual directories it may create a file in.
func look() sandboxView {
	v := sandboxView{UID: os.Getuid(), GID: os.Getgid(), Writable: []string{}}
	v.Cwd, _ = os.Getwd()
	v.Hostname, _ = os.Hostname()
	for _, d := range []string{"/", "/app", "/etc", "/tmp", "/dev/shm", "/axocoatl"} {
		f, err := os.CreateTemp(d, ".digest-")
		if err != nil {
			continue
		}
		f.Close()
		os.Remove(f.Name())
		v.Writable = append(v.Writable, d)
	}
	return v
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "digest:", err)
	os.Exit(1)
}
