package axoiso

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/axocoatl/isolation/internal/suggest"

	"github.com/axocoatl/isolation"
)

// The config file is checked against Config's json tags before it is decoded, so that a key
// nobody reads ("pool_sise"), a value of the wrong type or a name outside its set (a tier in
// disable_tiers) is an error naming the key as the file spells it (oci.runtime_root), never a Go
// field, rather than a setting silently ignored. The walk is generic: a key another part adds to
// Config is checked the day it is added.

// ConfigError is a config file's problems, each naming its key.
type ConfigError struct {
	// File is the config file's path.
	File string
	// Problems are one sentence each, starting with the key.
	Problems []string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("config %s: %s", e.File, strings.Join(e.Problems, "; "))
}

// enumKeys lists the keys whose values come from a fixed set, by pattern ("[]" for any element of
// a list, "*" for any key of a map). A part that adds such a key adds it here (or tags its field
// with `enum:"a|b"`, `enum:"tier"` or `enum:"requirement"`).
var enumKeys = map[string]string{
	"disable_tiers[]":  "tier",
	"oci.backend":      "libcontainer|crun|runc",
	"vm.kvm":           "auto|on|off",
	"vm.jailer.mode":   "auto|on|off",
	"tracing.protocol": "http|grpc",
}

func enumValues(spec string) []string {
	var vals []string
	switch spec {
	case "tier":
		for _, t := range isolation.Tiers() {
			vals = append(vals, t.String())
		}
	case "requirement":
		for _, r := range isolation.Requirements() {
			vals = append(vals, r.String())
		}
	default:
		vals = strings.Split(spec, "|")
	}
	return vals
}

// checkConfig walks the file's JSON against Config and returns its problems and the keys it sets
// (leaves: a map or list counts as one key).
// removedKeys are keys of earlier versions that a config may still set, with what replaced them.
var removedKeys = map[string]string{
	"oci.allow_network": "it shared the host's network with tools; a tool now declares the hosts it needs (tool.json \"network\": {\"egress\": [...]}) and the operator grants them (README: Network egress)",
}

func checkConfig(b []byte) (problems, keys []string) {
	w := walker{}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return []string{"not JSON: " + err.Error()}, nil
	}
	if dec.More() {
		return []string{"trailing data after the config object"}, nil
	}
	w.value("", "", raw, reflect.TypeFor[Config](), "")
	return w.problems, w.keys
}

type walker struct {
	problems []string
	keys     []string
}

func (w *walker) addf(format string, args ...any) {
	w.problems = append(w.problems, fmt.Sprintf(format, args...))
}

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
)

// value checks raw at path (pattern: the path with list indexes as [] and map keys as *) against
// t; enum is the field's enum tag.
func (w *walker) value(path, pattern string, raw json.RawMessage, t reflect.Type, enum string) {
	name := path
	if name == "" {
		name = "the config"
	}
	raw = bytes.TrimSpace(raw)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if bytes.Equal(raw, []byte("null")) {
		w.keys = append(w.keys, path)
		return
	}
	pt := reflect.PointerTo(t)
	custom := pt.Implements(textUnmarshaler) || pt.Implements(jsonUnmarshaler)
	switch {
	case !custom && t.Kind() == reflect.Struct:
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			w.addf("%s: want an object, got %s", name, jsonKind(raw))
			return
		}
		fields := jsonFields(t)
		names := make([]string, 0, len(fields))
		for n := range fields {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, k := range sortedKeys(obj) {
			f, ok := fields[k]
			if !ok {
				full := join(path, k)
				if why, ok := removedKeys[full]; ok {
					w.problems = append(w.problems, fmt.Sprintf("%q was removed: %s", full, why))
					continue
				}
				msg := fmt.Sprintf("unknown key %q", full)
				if s := suggest.Nearest(k, names); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", join(path, s))
				} else if path != "" {
					msg += fmt.Sprintf(" (%s has %s)", path, strings.Join(names, ", "))
				}
				w.problems = append(w.problems, msg)
				continue
			}
			w.value(join(path, k), join(pattern, k), obj[k], f.Type, f.Tag.Get("enum"))
		}
		return
	case !custom && t.Kind() == reflect.Map:
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			w.addf("%s: want an object, got %s", name, jsonKind(raw))
			return
		}
		kt := t.Key()
		nkeys := len(w.keys)
		for _, k := range sortedKeys(obj) {
			if reflect.PointerTo(kt).Implements(textUnmarshaler) {
				kv := reflect.New(kt)
				if err := kv.Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(k)); err != nil {
					msg := fmt.Sprintf("%s: key %q: %v", name, k, err)
					if kt == reflect.TypeFor[isolation.Tier]() {
						msg += suggest.DidYouMean(k, enumValues("tier"))
					}
					w.problems = append(w.problems, msg)
					continue
				}
			}
			w.value(join(path, k), join(pattern, "*"), obj[k], t.Elem(), "")
		}
		// A map is one key, as for Settings.
		w.keys = append(w.keys[:nkeys], path)
		return
	case !custom && t.Kind() == reflect.Slice && t.Elem().Kind() != reflect.Uint8:
		var arr []json.RawMessage
		if err := json.Unmarshal(raw, &arr); err != nil {
			w.addf("%s: want a list, got %s", name, jsonKind(raw))
			return
		}
		for i, e := range arr {
			w.value(fmt.Sprintf("%s[%d]", path, i), pattern+"[]", e, t.Elem(), enum)
		}
		w.keys = append(w.keys, path)
		return
	}
	// A leaf: decoding it alone gives its own error, which is reworded with the key.
	v := reflect.New(t)
	if err := json.Unmarshal(raw, v.Interface()); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			w.addf("%s: want %s, got %s", name, goKind(t), jsonKind(raw))
		} else {
			w.addf("%s: %s", name, strings.TrimPrefix(err.Error(), "json: "))
		}
		return
	}
	if strings.HasSuffix(path, "]") {
		// List elements are checked here but counted as their list's key.
	} else {
		w.keys = append(w.keys, path)
	}
	if enum == "" {
		enum = enumKeys[pattern]
	}
	if enum != "" && t.Kind() == reflect.String {
		s := v.Elem().String()
		vals := enumValues(enum)
		if !contains(vals, s) {
			w.addf("%s: %q is not one of %s%s", name, s, strings.Join(vals, ", "), suggest.DidYouMean(s, vals))
		}
	}
}

// jsonFields maps a struct's JSON names to its fields (those json/encoding would decode into).
func jsonFields(t reflect.Type) map[string]reflect.StructField {
	m := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		n, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && n == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range jsonFields(ft) {
					if _, ok := m[k]; !ok {
						m[k] = v
					}
				}
				continue
			}
		}
		if n == "" {
			n = f.Name
		}
		m[n] = f
	}
	return m
}

func sortedKeys(m map[string]json.RawMessage) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func contains(vals []string, s string) bool {
	for _, v := range vals {
		if v == s {
			return true
		}
	}
	return false
}

func jsonKind(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "a list"
	case '"':
		return "a string " + truncate(string(raw), 40)
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "the number " + truncate(string(raw), 40)
}

func goKind(t reflect.Type) string {
	switch t {
	case reflect.TypeFor[Duration]():
		return `a duration such as "10s"`
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return "a " + t.Kind().String()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Setting is one key of the effective configuration.
type Setting struct {
	// Key is the config file's key (oci.pool_size).
	Key string `json:"key"`
	// Value is the effective value, as JSON; for a key left unset whose zero stands for a
	// default applied further down (a tier's), that default.
	Value json.RawMessage `json:"value"`
}

// documentedDefaults are the defaults applied below this package (by the executor or a tier) for
// keys whose zero means "the default": what `axoiso config check` shows for them.
var documentedDefaults = map[string]string{
	"max_output_bytes":             "1048576",
	"default_timeout":              `"10s"`,
	"max_timeout":                  `"1m0s"`,
	"max_memory_mb":                `{"Firecracker":1024,"Oci":1024,"Wasmtime":256}`,
	"wasm.queue_timeout":           `"2s"`,
	"wasm.max_modules":             "64",
	"wasm.max_module_mb":           "1024",
	"wasm.http.max_request_bytes":  "1048576",
	"wasm.http.max_response_bytes": "4194304",
	"wasm.http.max_requests":       "64",
	"wasm.http.max_redirects":      "5",
	"wasm.http.timeout":            `"10s"`,
	"oci.backend":                  `"libcontainer"`,
	"oci.pool_size":                "2",
	"oci.pool_idle":                `"5m0s"`,
	"oci.pool_max_total":           "32",
	"oci.pool_max_memory_mb":       "2048",
	"oci.memory_mb":                "256",
	"oci.pids":                     "128",
	"oci.cpus":                     "1",
	"oci.io_size_mb":               "4",
	"oci.id_user":                  `"axocoatl"`,
	"oci.id_slots":                 "1024",
	"vm.pool_idle":                 `"5m0s"`,
	"vm.max_shapes":                "4",
	"vm.pool_max_total":            "4",
	"vm.pool_max_memory_mb":        "2048",
	"vm.kvm":                       `"off"`,
	"vm.vcpus":                     "1",
	"vm.jailer.mode":               `"auto"`,
	"vm.jailer.uid":                "1895890944",
	"vm.jailer.gid":                "1895890944",
	"vm.jailer.chroot_base_dir":    `"/srv/jailer"`,
	"serve.read_header_timeout":    `"10s"`,
	"serve.body_timeout":           `"10s"`,
	"serve.idle_timeout":           `"1m0s"`,
	"serve.max_mcp_sessions":       "256",
	"tracing.protocol":             `"http"`,
	"tracing.sample_ratio":         "1",
}

// Settings lists every key of c (after WithDefaults) with its effective value, in the file's
// key order (depth first, by field order). Maps and lists are one key each.
func (c Config) Settings() []Setting {
	var out []Setting
	var walk func(path string, v reflect.Value)
	walk = func(path string, v reflect.Value) {
		t := v.Type()
		pt := reflect.PointerTo(t)
		if t.Kind() == reflect.Struct && !pt.Implements(textUnmarshaler) && !pt.Implements(jsonUnmarshaler) {
			for i := 0; i < t.NumField(); i++ {
				f := t.Field(i)
				tag := f.Tag.Get("json")
				if !f.IsExported() || tag == "-" {
					continue
				}
				n, _, _ := strings.Cut(tag, ",")
				if n == "" {
					n = f.Name
				}
				walk(join(path, n), v.Field(i))
			}
			return
		}
		s := Setting{Key: path}
		if v.IsZero() {
			if d, ok := documentedDefaults[path]; ok {
				s.Value = json.RawMessage(d)
			} else if t.Kind() == reflect.Slice {
				s.Value = json.RawMessage("[]")
			}
		}
		if s.Value == nil {
			b, err := json.Marshal(v.Interface())
			if err != nil {
				b = []byte(`"?"`)
			}
			s.Value = b
		}
		out = append(out, s)
	}
	walk("", reflect.ValueOf(c))
	return out
}
