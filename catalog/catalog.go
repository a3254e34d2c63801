// Package catalog reads tool folders: a tools root holds one folder per tool,
// {root}/{name}/tool.json, or an OCI bundle ({root}/{name}/config.json + rootfs/) without one.
package catalog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/jsonschema-go/jsonschema"

	"github.com/axocoatl/isolation"
)

// ManifestFile is the tool manifest's file name inside a tool folder.
const ManifestFile = "tool.json"

// ValidateName checks a tool name before any path is built from it: ^[a-z0-9][a-z0-9._-]{0,62}$
// and no "..". The error matches isolation.ErrInvalidToolName.
func ValidateName(name string) error {
	if !validName(name) {
		return &isolation.Error{Kind: isolation.ErrInvalidToolName,
			Message: fmt.Sprintf("%q: a tool name is 1–63 characters of a-z, 0-9, '.', '_', '-', starts with a letter or digit, and has no '..' or '/'", truncate(name, 80))}
	}
	return nil
}

// validName matches ^[a-z0-9][a-z0-9._-]{0,62}$ without "..". Hand-written rather than a regexp:
// it runs on every call, and a package-level regexp would be compiled at every process start,
// including each container init libcontainer re-executes this binary as.
func validName(name string) bool {
	if len(name) == 0 || len(name) > 63 || strings.Contains(name, "..") {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// Manifest is tool.json.
type Manifest struct {
	Runtime     isolation.RuntimeRequirement `json:"runtime"`
	Entrypoint  string                       `json:"entrypoint,omitempty"`
	TimeoutMS   int64                        `json:"timeout_ms,omitempty"`
	MemoryMB    int                          `json:"memory_mb,omitempty"`
	Description string                       `json:"description,omitempty"`
	InputSchema json.RawMessage              `json:"input_schema,omitempty"`
	// Network asks for a network device (honoured only where policy allows).
	Network bool `json:"network,omitempty"`
}

// Tool is one catalog entry. Tools are immutable once loaded.
type Tool struct {
	Name string `json:"name"`
	// Dir is the tool's folder, absolute.
	Dir string `json:"dir"`
	Manifest
	// EntrypointPath is Entrypoint resolved inside Dir ("" when there is none).
	EntrypointPath string `json:"-"`

	schema *jsonschema.Resolved
}

// Timeout is the manifest's timeout (0 when unset).
func (t *Tool) Timeout() time.Duration { return time.Duration(t.TimeoutMS) * time.Millisecond }

// ValidateInput checks input against the tool's input schema, if it has one. The error matches
// isolation.ErrInvalidInput.
func (t *Tool) ValidateInput(input []byte) error {
	if t.schema == nil {
		return nil
	}
	var v any
	if err := json.Unmarshal(input, &v); err != nil {
		return &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: t.Name, Message: "input is not JSON", Err: err}
	}
	if err := t.schema.Validate(v); err != nil {
		return &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: t.Name, Message: "input does not match the tool's input_schema: " + oneLine(err.Error())}
	}
	return nil
}

// Catalog is a tools root. Tools added or changed on disk are seen without a restart: each lookup
// checks the identity (inode, size, mtime) of the tool's folder, manifest and entrypoint and
// reuses the parsed tool (and its compiled schema) only while all three are unchanged. A Catalog
// is safe for concurrent use.
type Catalog struct {
	root string

	mu    sync.Mutex // protects cache
	cache map[string]cachedTool
}

type cachedTool struct {
	stamp stamp
	tool  *Tool
}

// Open returns the catalog at root. The root must exist.
func Open(root string) (*Catalog, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("tools root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("tools root %s is not a directory", abs)
	}
	return &Catalog{root: abs, cache: map[string]cachedTool{}}, nil
}

// Root is the absolute tools root.
func (c *Catalog) Root() string { return c.root }

// Get loads one tool. Errors match isolation.ErrInvalidToolName, isolation.ErrToolNotFound, or
// describe a broken tool folder.
func (c *Catalog) Get(name string) (*Tool, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	dir := filepath.Join(c.root, name)
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		return nil, &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: name, Message: fmt.Sprintf("no folder %s", dir)}
	}
	return c.load(name, dir)
}

// load returns the cached tool while its files are unchanged, else parses it again.
func (c *Catalog) load(name, dir string) (*Tool, error) {
	c.mu.Lock()
	ct, ok := c.cache[name]
	c.mu.Unlock()
	if ok && ct.stamp == stampOf(dir, ct.tool.EntrypointPath) {
		return ct.tool, nil
	}
	t, err := loadTool(name, dir)
	if err != nil {
		c.mu.Lock()
		delete(c.cache, name)
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Lock()
	c.cache[name] = cachedTool{stamp: stampOf(dir, t.EntrypointPath), tool: t}
	c.mu.Unlock()
	return t, nil
}

// stamp identifies the versions of a tool's folder, manifest and entrypoint.
type stamp struct{ dir, manifest, entrypoint fileStamp }

type fileStamp struct {
	ok        bool
	ino, size uint64
	mtime     int64
	mode      os.FileMode
}

func stampOf(dir, entrypoint string) stamp {
	st := stamp{dir: fileStampOf(dir), manifest: fileStampOf(filepath.Join(dir, ManifestFile))}
	if entrypoint != "" {
		st.entrypoint = fileStampOf(entrypoint)
	}
	return st
}

func fileStampOf(p string) fileStamp {
	fi, err := os.Lstat(p)
	if err != nil {
		return fileStamp{}
	}
	return fileStamp{ok: true, ino: inode(fi), size: uint64(fi.Size()), mtime: fi.ModTime().UnixNano(), mode: fi.Mode()}
}

// List loads every tool in the root, sorted by name. Folders whose names are not valid tool names
// are skipped; broken tool folders are returned in errs.
func (c *Catalog) List() (tools []*Tool, errs []error) {
	ents, err := os.ReadDir(c.root)
	if err != nil {
		return nil, []error{err}
	}
	for _, e := range ents {
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		t, err := c.load(e.Name(), filepath.Join(c.root, e.Name()))
		if err != nil {
			if !errors.Is(err, isolation.ErrToolNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		tools = append(tools, t)
	}
	sort.Slice(tools, func(i, j int) bool { return tools[i].Name < tools[j].Name })
	return tools, errs
}

func loadTool(name, dir string) (*Tool, error) {
	t := &Tool{Name: name, Dir: dir}
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if isBundle(dir) {
			t.Runtime = isolation.RequireContainerImage
			return t, nil
		}
		return nil, &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: name, Message: fmt.Sprintf("%s has no %s and is not an OCI bundle (config.json + rootfs/)", dir, ManifestFile)}
	case err != nil:
		return nil, fmt.Errorf("tool %q: %w", name, err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var m struct {
		Manifest
		Runtime *isolation.RuntimeRequirement `json:"runtime"`
	}
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("tool %q: %s: %w", name, ManifestFile, err)
	}
	if m.Runtime == nil {
		return nil, fmt.Errorf("tool %q: %s: \"runtime\" is required", name, ManifestFile)
	}
	t.Manifest = m.Manifest
	t.Runtime = *m.Runtime
	if t.TimeoutMS < 0 || t.MemoryMB < 0 {
		return nil, fmt.Errorf("tool %q: %s: timeout_ms and memory_mb must not be negative", name, ManifestFile)
	}
	switch t.Runtime {
	case isolation.RequireContainerImage:
		if !isBundle(dir) {
			return nil, fmt.Errorf("tool %q: runtime ContainerImage needs config.json and rootfs/ in %s", name, dir)
		}
	case isolation.RequireNativeTrusted:
		// the name selects a registered Go function
	default:
		if t.Entrypoint == "" {
			return nil, fmt.Errorf("tool %q: %s: runtime %s needs an \"entrypoint\"", name, ManifestFile, t.Runtime)
		}
		p, err := resolveInside(dir, t.Entrypoint)
		if err != nil {
			return nil, fmt.Errorf("tool %q: entrypoint: %w", name, err)
		}
		t.EntrypointPath = p
	}
	if len(t.InputSchema) > 0 && string(t.InputSchema) != "null" {
		s, err := compileSchema(name, t.InputSchema)
		if err != nil {
			return nil, fmt.Errorf("tool %q: input_schema: %w", name, err)
		}
		t.schema = s
	}
	return t, nil
}

// resolveInside resolves rel inside dir, refusing absolute paths, ".." and symlinks that leave dir.
func resolveInside(dir, rel string) (string, error) {
	if filepath.IsAbs(rel) || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("%q must be a relative path inside the tool folder", rel)
	}
	p := filepath.Join(dir, rel)
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", err
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	if r, err := filepath.Rel(realDir, real); err != nil || !filepath.IsLocal(r) {
		return "", fmt.Errorf("%q resolves outside the tool folder", rel)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%q is not a regular file", rel)
	}
	return p, nil
}

func isBundle(dir string) bool {
	if fi, err := os.Stat(filepath.Join(dir, "config.json")); err != nil || !fi.Mode().IsRegular() {
		return false
	}
	fi, err := os.Stat(filepath.Join(dir, "rootfs"))
	return err == nil && fi.IsDir()
}

// compileSchema resolves a tool's input schema (JSON Schema draft 2020-12 or draft-07, the
// dialects MCP clients speak). It uses the same library as the MCP SDK rather than a second one:
// besides one fewer dependency, the other candidate compiled its meta-schemas in a package init
// (2.6 ms of every process start, paid again by every container's re-executed init).
func compileSchema(name string, raw json.RawMessage) (*jsonschema.Resolved, error) {
	var s jsonschema.Schema
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	switch s.Schema {
	case "", "https://json-schema.org/draft/2020-12/schema",
		"http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft-07/schema#":
	default:
		// Refused here rather than at every call: the validator would reject every input.
		return nil, fmt.Errorf("$schema %q: only JSON Schema draft 2020-12 and draft-07 are supported", s.Schema)
	}
	// Schemas must not fetch anything: only the tool's own document is known.
	return s.Resolve(&jsonschema.ResolveOptions{
		BaseURI: "axocoatl:///tools/" + name + "/input_schema.json",
		Loader: func(uri *url.URL) (*jsonschema.Schema, error) {
			return nil, fmt.Errorf("schema references %s: external schemas are not loaded", uri)
		},
	})
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Builtin returns a catalog entry for a tool that has no folder (a registered in-process
// function). It panics on an invalid name or schema: built-ins are fixed at build time.
func Builtin(name string, runtime isolation.RuntimeRequirement, description string, inputSchema []byte) *Tool {
	if err := ValidateName(name); err != nil {
		panic(err)
	}
	t := &Tool{Name: name, Manifest: Manifest{Runtime: runtime, Description: description, InputSchema: inputSchema}}
	if len(inputSchema) > 0 {
		s, err := compileSchema(name, inputSchema)
		if err != nil {
			panic(fmt.Sprintf("built-in %q: %v", name, err))
		}
		t.schema = s
	}
	return t
}
