// Package catalog reads tool folders: a tools root holds one folder per tool,
// {root}/{name}/tool.json, or an OCI bundle ({root}/{name}/config.json + rootfs/) without one.
package catalog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/egress"
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
	// Env are environment variables the tool gets (plain values: secrets come from the
	// operator's config, never from tool.json).
	Env map[string]string `json:"env,omitempty"`
	// Network is what the tool asks to reach; absent or false: nothing.
	Network Network `json:"network,omitzero"`
	// Base names an OCI bundle in the tools root (a folder name, never a path) whose root a
	// Python, Shell or Arbitrary tool runs on instead of the tier's own root: an image with the
	// tool's dependencies.
	Base string `json:"base,omitempty"`
	// Idempotent declares that running the tool twice on the same input does no harm: a fleet
	// gateway that lost the worker running a call may then run it again elsewhere. Calls of other
	// tools run at most once.
	Idempotent bool `json:"idempotent,omitempty"`
}

// MaxEgressPatterns bounds tool.json's "network": {"egress": [...]}.
const MaxEgressPatterns = 256

// Network is tool.json's "network": {"egress": ["api.example.com:443", "*.pypi.org:443",
// "203.0.113.0/24:5432/tcp"]} (patterns: see package egress). false, null or absent asks for
// nothing. The tool only asks: the operator's grants decide what a call gets (the executor's
// effective policy).
type Network struct {
	Egress []egress.Pattern `json:"egress,omitempty"`
}

// UnmarshalJSON accepts false, null or {"egress": [patterns]}; true is refused, saying what to
// write instead (it used to share the host's network).
func (n *Network) UnmarshalJSON(b []byte) error {
	switch string(bytes.TrimSpace(b)) {
	case "false", "null":
		*n = Network{}
		return nil
	case "true":
		return errors.New(`"network": true is no longer a grant: list what the tool must reach, e.g. "network": {"egress": ["api.example.com:443"]} (names need a port; see the README's egress patterns)`)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var v struct {
		Egress []json.RawMessage `json:"egress"`
	}
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf(`"network": want false or {"egress": ["host:port", ...]}: %w`, err)
	}
	if len(v.Egress) > MaxEgressPatterns {
		return fmt.Errorf(`"network": %d egress patterns, at most %d`, len(v.Egress), MaxEgressPatterns)
	}
	out := Network{Egress: make([]egress.Pattern, 0, len(v.Egress))}
	for i, raw := range v.Egress {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf(`"network": egress[%d] is not a string`, i)
		}
		p, err := egress.ParsePattern(s)
		if err != nil {
			return fmt.Errorf(`"network": egress[%d]: %w`, i, err)
		}
		out.Egress = append(out.Egress, p)
	}
	*n = out
	return nil
}

// Tool is one catalog entry. Tools are immutable once loaded.
type Tool struct {
	Name string `json:"name"`
	// Dir is the tool's folder, absolute.
	Dir string `json:"dir"`
	Manifest
	// EntrypointPath is Entrypoint resolved inside Dir ("" when there is none).
	EntrypointPath string `json:"-"`
	// BasePath is Base's bundle folder, resolved inside the tools root ("" without a base).
	BasePath string `json:"-"`

	schema *compiledSchema
}

// Timeout is the manifest's timeout (0 when unset).
func (t *Tool) Timeout() time.Duration { return time.Duration(t.TimeoutMS) * time.Millisecond }

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

// Get loads one tool. Errors match isolation.ErrInvalidToolName, isolation.ErrToolNotFound or
// isolation.ErrInvalidTool (a broken tool folder or manifest).
func (c *Catalog) Get(name string) (*Tool, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	return c.load(name)
}

// load returns the cached tool while its files are unchanged, else parses it again.
func (c *Catalog) load(name string) (*Tool, error) {
	c.mu.Lock()
	ct, ok := c.cache[name]
	c.mu.Unlock()
	if ok && ct.stamp == c.stampOf(name, ct.tool) {
		return ct.tool, nil
	}
	t, st, err := c.loadTool(name)
	if err != nil {
		c.mu.Lock()
		delete(c.cache, name)
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Lock()
	c.cache[name] = cachedTool{stamp: st, tool: t}
	c.mu.Unlock()
	return t, nil
}

// stamp identifies the versions of a tool's folder entry in the root (a symlink's own identity
// when it is one), its resolved folder, manifest and entrypoint.
type stamp struct{ entry, dir, manifest, entrypoint, base fileStamp }

type fileStamp struct {
	ok        bool
	ino, size uint64
	mtime     int64
	mode      os.FileMode
}

// stampOf is the current stamp of a loaded tool. Stat, not Lstat, for the manifest and the
// entrypoint: the load stamps them from the open files (fstat), so a symlink inside the folder
// is compared by its target.
func (c *Catalog) stampOf(name string, t *Tool) stamp {
	st := stamp{
		entry:    fileStampOf(os.Lstat(filepath.Join(c.root, name))),
		dir:      fileStampOf(os.Stat(t.Dir)),
		manifest: fileStampOf(os.Stat(filepath.Join(t.Dir, ManifestFile))),
	}
	if t.EntrypointPath != "" {
		st.entrypoint = fileStampOf(os.Stat(t.EntrypointPath))
	}
	if t.Base != "" {
		st.base = fileStampOf(os.Lstat(filepath.Join(c.root, t.Base)))
	}
	return st
}

func fileStampOf(fi os.FileInfo, err error) fileStamp {
	if err != nil {
		return fileStamp{}
	}
	return stampFromInfo(fi)
}

func stampFromInfo(fi os.FileInfo) fileStamp {
	return fileStamp{ok: true, ino: inode(fi), size: uint64(fi.Size()), mtime: fi.ModTime().UnixNano(), mode: fi.Mode()}
}

// List loads every tool in the root, sorted by name. Entries whose names are not valid tool names
// are skipped; broken tool folders are returned in errs (one broken folder never hides the others).
func (c *Catalog) List() (tools []*Tool, errs []error) {
	ents, err := os.ReadDir(c.root)
	if err != nil {
		return nil, []error{err}
	}
	for _, e := range ents {
		if (!e.IsDir() && e.Type()&fs.ModeSymlink == 0) || ValidateName(e.Name()) != nil {
			continue
		}
		t, err := c.load(e.Name())
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

// testHookManifestRead, when set by a test, runs between reading tool.json and parsing it.
var testHookManifestRead func(dir string)

// Manifest field ranges refused at load. They are sanity bounds against typos and wrapping
// arithmetic (17592186044416 MB once became "no limit"), not policy: operator ceilings apply at
// call time. 0 (or absent) means the default.
const (
	MaxMemoryMB  = 1 << 20          // 1 TiB
	MaxTimeoutMS = 24 * 3600 * 1000 // one day
)

// loadTool parses a tool folder. The stamp it returns is taken before anything is read, so an edit
// made while parsing is seen at the next lookup instead of being cached stale.
func (c *Catalog) loadTool(name string) (*Tool, stamp, error) {
	var st stamp
	entry := filepath.Join(c.root, name)
	fi, err := os.Lstat(entry)
	if errors.Is(err, fs.ErrNotExist) {
		// The common miss (a built-in's name): answered without opening the root. The message
		// names no host path: it reaches HTTP and MCP clients.
		return nil, st, &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: name, Message: fmt.Sprintf("no tool %q in the tools root", name)}
	}
	st.entry = fileStampOf(fi, err)
	root, err := os.OpenRoot(c.root)
	if err != nil {
		return nil, st, fmt.Errorf("tools root: %w", err)
	}
	defer root.Close()
	dir, dirPath, err := openFolder(root, c.root, name)
	if err != nil {
		return nil, st, err
	}
	defer dir.Close()
	st.dir = fileStampOf(os.Stat(dirPath))
	t := &Tool{Name: name, Dir: dirPath}
	raw, mst, err := readRegular(dir, ManifestFile, MaxManifestBytes)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if isBundleIn(dir) {
			t.Runtime = isolation.RequireContainerImage
			return t, st, nil
		}
		return nil, st, &isolation.Error{Kind: isolation.ErrToolNotFound, Tool: name, Message: fmt.Sprintf("%s has no %s and is not an OCI bundle (config.json + rootfs/)", dirPath, ManifestFile)}
	case err != nil:
		return nil, st, invalidTool(name, "%s: %v", ManifestFile, err)
	}
	st.manifest = mst
	if testHookManifestRead != nil {
		testHookManifestRead(dirPath)
	}
	m, err := parseManifest(raw)
	if err != nil {
		return nil, st, invalidTool(name, "%s: %v", ManifestFile, err)
	}
	t.Manifest = *m
	if err := checkEnv(t.Env); err != nil {
		return nil, st, invalidTool(name, "%s: %v", ManifestFile, err)
	}
	switch t.Runtime {
	case isolation.RequireContainerImage:
		if !isBundleIn(dir) {
			return nil, st, invalidTool(name, "runtime ContainerImage needs config.json and rootfs/ in %s", dirPath)
		}
	case isolation.RequireNativeTrusted:
		// the name selects a registered Go function
	default:
		if t.Entrypoint == "" {
			return nil, st, invalidTool(name, "%s: runtime %s needs an \"entrypoint\"", ManifestFile, t.Runtime)
		}
		rel, est, err := resolveEntrypoint(dir, t.Entrypoint)
		if err != nil {
			return nil, st, invalidTool(name, "entrypoint: %v", err)
		}
		t.EntrypointPath, st.entrypoint = filepath.Join(dirPath, rel), est
	}
	if t.Base != "" {
		st.base = fileStampOf(os.Lstat(filepath.Join(c.root, t.Base)))
		if t.BasePath, err = resolveBase(root, c.root, name, t.Manifest); err != nil {
			return nil, st, err
		}
	}
	if len(t.InputSchema) > 0 && string(t.InputSchema) != "null" {
		s, err := compileSchema(name, t.InputSchema)
		if err != nil {
			return nil, st, invalidTool(name, "input_schema: %v", err)
		}
		t.schema = s
	}
	return t, st, nil
}

// resolveBase checks a manifest's base (a name of a bundle folder in the tools root, for a
// script tool) and returns the bundle's resolved folder.
func resolveBase(root *os.Root, rootPath, name string, m Manifest) (string, error) {
	switch m.Runtime {
	case isolation.RequirePython, isolation.RequireShell, isolation.RequireArbitrary:
	default:
		return "", invalidTool(name, "%s: \"base\" is for Python, Shell and Arbitrary tools, not %s", ManifestFile, m.Runtime)
	}
	if !validName(m.Base) {
		return "", invalidTool(name, "%s: base %q is not a name: it names an OCI bundle folder in the tools root (a-z, 0-9, '.', '_', '-'; no path)", ManifestFile, truncate(m.Base, 80))
	}
	dir, dirPath, err := openFolder(root, rootPath, m.Base)
	if err != nil {
		return "", invalidTool(name, "base %q: %v", m.Base, oneLine(err.Error()))
	}
	defer dir.Close()
	if !isBundleIn(dir) {
		return "", invalidTool(name, "base %q is not an OCI bundle (config.json + rootfs/); build one with `axoiso bundle %s --from IMAGE`", m.Base, m.Base)
	}
	return dirPath, nil
}

// parseManifest decodes tool.json strictly: one object, no unknown fields, nothing after it, a
// runtime, and limits in range.
func parseManifest(raw []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var m struct {
		Manifest
		Runtime *isolation.RuntimeRequirement `json:"runtime"`
	}
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("trailing data after the object (offset %d)", dec.InputOffset())
	}
	if m.Runtime == nil {
		return nil, errors.New("\"runtime\" is required")
	}
	m.Manifest.Runtime = *m.Runtime
	if err := m.checkLimits(); err != nil {
		return nil, err
	}
	return &m.Manifest, nil
}

// checkLimits refuses timeout_ms and memory_mb out of range.
func (m *Manifest) checkLimits() error {
	if m.TimeoutMS < 0 || m.TimeoutMS > MaxTimeoutMS {
		return fmt.Errorf("timeout_ms %d is out of range: 1..%d (0 or absent: the default)", m.TimeoutMS, MaxTimeoutMS)
	}
	if m.MemoryMB < 0 || m.MemoryMB > MaxMemoryMB {
		return fmt.Errorf("memory_mb %d is out of range: 1..%d (0 or absent: the default)", m.MemoryMB, MaxMemoryMB)
	}
	return nil
}

// resolveEntrypoint finds rel inside the tool folder: a relative, local path, opened through the
// folder's os.Root (no absolute or escaping symlink, no ".."), a regular file. It returns the
// resolved path relative to the folder.
func resolveEntrypoint(dir *os.Root, rel string) (string, fileStamp, error) {
	if filepath.IsAbs(rel) || !filepath.IsLocal(rel) {
		return "", fileStamp{}, fmt.Errorf("%q must be a relative path inside the tool folder", rel)
	}
	real, st, err := statRegular(dir, rel)
	if err != nil {
		return "", fileStamp{}, fmt.Errorf("%q is missing, not a regular file, or resolves outside the tool folder: %v", rel, err)
	}
	return real, st, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// NewBuiltin returns the catalog entry of a tool that has no folder (a registered in-process
// function, a Wasm module held in memory), checked by the rules tool.json is checked by: a valid
// name, a runtime that needs no folder (not ContainerImage), no entrypoint or base, timeout_ms and
// memory_mb in range, an input schema that compiles. Errors match isolation.ErrInvalidToolName or
// isolation.ErrInvalidTool.
func NewBuiltin(name string, m Manifest) (*Tool, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	switch {
	case m.Runtime == isolation.RequireContainerImage:
		return nil, invalidTool(name, "runtime ContainerImage needs a tool folder (an OCI bundle)")
	case m.Entrypoint != "":
		return nil, invalidTool(name, "a tool without a folder has no entrypoint (%q)", truncate(m.Entrypoint, 80))
	case m.Base != "":
		return nil, invalidTool(name, "a tool without a folder has no base (%q)", truncate(m.Base, 80))
	}
	if err := m.checkLimits(); err != nil {
		return nil, invalidTool(name, "%v", err)
	}
	t := &Tool{Name: name, Manifest: m}
	if len(m.InputSchema) > 0 && string(m.InputSchema) != "null" {
		s, err := compileSchema(name, m.InputSchema)
		if err != nil {
			return nil, invalidTool(name, "input_schema: %v", err)
		}
		t.schema = s
	}
	return t, nil
}
