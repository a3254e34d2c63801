package catalog

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/google/jsonschema-go/jsonschema"

	"github.com/axocoatl/isolation"
)

// Input schemas come from tool folders: untrusted. The validator (google/jsonschema-go) recurses
// without a bound and builds error strings that print instances, so a schema could crash the
// process (a stack overflow is fatal, no recover catches it) or exhaust it. The catalog therefore
//
//   - bounds a schema's JSON nesting depth and number of subschemas at load;
//   - refuses, at load, a $ref cycle that consumes no input: a chain of keywords applying a
//     subschema to the same instance ($ref, $dynamicRef, allOf, anyOf, oneOf, not, if, then,
//     else, dependentSchemas, dependencies) that comes back to where it started. Such a cycle
//     makes validation recurse forever on any input. A recursive schema that steps into the
//     instance on the way (a tree: $defs/node with properties/children/items → node) is
//     legitimate: every round consumes one level of the input, so its depth is bounded by the
//     input's;
//   - before each validation, walks the (schema, instance) pairs the validator could visit (an
//     over-approximation: every branch of anyOf/oneOf/if, every pattern for every key) with an
//     explicit stack, and refuses inputs for which the validator's recursion depth, number of
//     steps, or the bytes its error message could reach exceed fixed bounds;
//   - hands the validator an instance whose objects and arrays print as a short preview, so an
//     error never copies a large input once per failing branch.
const (
	// MaxSchemaDepth bounds input_schema's JSON nesting (objects and arrays).
	MaxSchemaDepth = 128
	// MaxSchemaNodes bounds the number of subschemas in an input_schema (the validator
	// resolves ~5,000 a second on this kind of machine; tool schemas hold tens to hundreds).
	MaxSchemaNodes = 1 << 12
	// MaxInputDepth bounds the JSON nesting of any call input (encoding/json's own limit, so
	// only the message changes: "too deep" rather than "not valid JSON").
	MaxInputDepth = 10000
	// MaxValidationDepth bounds the validator's recursion (schema frames) for one input: about
	// 170 levels of a tree schema (3 frames a level). The validator's error for a failure at the
	// bottom is built by copying the message once per frame: quadratic in this depth.
	MaxValidationDepth = 512
	// ValidationWorkAllowance + ValidationWorkPerValue × (values in the input) bounds the
	// validator's steps for one input (a step is one subschema applied to one value, weighted by
	// the keyword lists it scans and the values it hashes or compares). A large input may take
	// proportionally long, as its decoding does; a schema cannot multiply that by more than
	// ValidationWorkPerValue (a step costs ~1 µs here).
	ValidationWorkAllowance = 1 << 21
	ValidationWorkPerValue  = 8
	// MaxValidationBytes bounds the bytes the validator's error messages could allocate under
	// anyOf, oneOf, not, if and contains, which evaluate every branch (elsewhere the first
	// failure returns, and the depth bound bounds its message).
	MaxValidationBytes = 64 << 20
)

// compiledSchema is a resolved input schema with the catalog's analysis of it.
type compiledSchema struct {
	resolved *jsonschema.Resolved
	graph    *schemaGraph
}

// ValidateInput checks input (already known to be one JSON value, see CheckInput) against the
// tool's input schema, if it has one. The error matches isolation.ErrInvalidInput.
func (t *Tool) ValidateInput(input []byte) error {
	if t.schema == nil {
		return nil
	}
	if d := jsonDepth(input); d > MaxInputDepth {
		return &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: t.Name, Message: fmt.Sprintf("input is nested too deep (more than %d levels)", MaxInputDepth)}
	}
	var v any
	if err := json.Unmarshal(input, &v); err != nil {
		return &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: t.Name, Message: "input is not JSON", Err: err}
	}
	v, n := previewable(v)
	if err := t.schema.graph.cost(v, ValidationWorkAllowance+ValidationWorkPerValue*n); err != nil {
		return &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: t.Name, Message: "input is too complex for the tool's input_schema: " + err.Error()}
	}
	if err := t.schema.validate(v); err != nil {
		var ie *isolation.Error
		if errors.As(err, &ie) {
			ie.Tool = t.Name
			return ie
		}
		return &isolation.Error{Kind: isolation.ErrInvalidInput, Tool: t.Name, Message: "input does not match the tool's input_schema: " + truncate(oneLine(err.Error()), 4096)}
	}
	return nil
}

// validate runs the validator. Its assertions panic on states its resolver should have ruled
// out; a panic is reported as the schema's fault (ErrInvalidTool) rather than taking down a
// process that serves other tools. (Stack overflows cannot be recovered: the bounds above
// prevent them.)
func (c *compiledSchema) validate(v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &isolation.Error{Kind: isolation.ErrInvalidTool, Message: fmt.Sprintf("the input_schema validator failed: %v", p)}
		}
	}()
	return c.resolved.Validate(v)
}

// compileSchema resolves a tool's input schema (JSON Schema draft 2020-12 or draft-07, the
// dialects MCP clients speak). It uses the same library as the MCP SDK rather than a second one:
// besides one fewer dependency, the other candidate compiled its meta-schemas in a package init
// (2.6 ms of every process start, paid again by every container's re-executed init).
func compileSchema(name string, raw json.RawMessage) (*compiledSchema, error) {
	n, d := jsonShape(raw)
	if d > MaxSchemaDepth {
		return nil, fmt.Errorf("nested %d levels deep, the limit is %d", d, MaxSchemaDepth)
	}
	// Bounded before the validator's parser sees it (~75 µs a subschema here, loaded): the
	// objects in the text bound the subschemas.
	if n > 4*MaxSchemaNodes {
		return nil, fmt.Errorf("%d JSON objects, over the limit of %d (subschemas are limited to %d)", n, 4*MaxSchemaNodes, MaxSchemaNodes)
	}
	var s jsonschema.Schema
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	base := "axocoatl:///tools/" + name + "/input_schema.json"
	// The graph is built from the validator's own parse, not from the JSON text: the two differ
	// (duplicate keys merge into one subschema in the validator's structs), and the cycle check
	// must see what the validator will follow.
	a, err := buildGraph(&s, base)
	if err != nil {
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
	rs, err := s.Resolve(&jsonschema.ResolveOptions{
		BaseURI: base,
		Loader: func(uri *url.URL) (*jsonschema.Schema, error) {
			return nil, fmt.Errorf("schema references %s: external schemas are not loaded", uri)
		},
	})
	if err != nil {
		return nil, err
	}
	g, err := a.link()
	if err != nil {
		return nil, err
	}
	return &compiledSchema{resolved: rs, graph: g}, nil
}

// jsonDepth returns the maximum nesting of objects and arrays in b (which need not be valid JSON),
// without recursion.
func jsonDepth(b []byte) int {
	_, depth := jsonShape(b)
	return depth
}

// jsonShape scans b (which need not be valid JSON) once, without recursion, and returns how many
// objects it holds and how deep objects and arrays nest.
func jsonShape(b []byte) (objects, maxDepth int) {
	depth := 0
	inString, escaped := false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			if c == '{' {
				objects++
			}
			depth++
			maxDepth = max(maxDepth, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return objects, maxDepth
}

// schemaGraph is a schema's subschemas and which of them apply to what.
type schemaGraph struct {
	nodes []gnode
}

// gnode is one subschema. Indices refer to schemaGraph.nodes; -1 is none.
type gnode struct {
	ptr string // JSON pointer from the root, for messages
	// same: subschemas applied to the same instance ($ref, $dynamicRef, allOf, anyOf, oneOf,
	// not, if, then, else); dep: the same, when the instance has the property.
	same []int
	dep  map[string][]int
	// Subschemas applied to parts of the instance.
	props                                  map[string]int
	patterns                               []int
	additional, propNames, unevalProps     int
	itemsArr                               []int
	items, addItems, contains, unevalItems int
	work                                   int  // a step's weight: 1 + the lists it scans
	msg                                    int  // bytes a failing step here may print besides the instance
	strCheck                               bool // minLength/maxLength/pattern print a string instance whole
	collects                               bool // anyOf/oneOf/not/if/contains: every branch is evaluated
	hashItems                              bool // uniqueItems hashes the whole array instance
	refs                                   []string
	dynRefs                                []string
	base                                   int
}

type anchor struct {
	node    int
	dynamic bool
}

// analyzer builds a schemaGraph, resolving $ref like the validator does (the base URI of each
// subschema from $id, anchors per base, JSON pointers from the base).
type analyzer struct {
	g       *schemaGraph
	draft7  bool
	byPtr   map[string]int
	uris    map[string]int
	ids     map[string]bool // URIs declared by an $id
	baseURI map[int]*url.URL
	anchors map[int]map[string]anchor
	dynamic map[string][]int
}

// buildGraph registers a schema's subschemas (bounding their number and nesting); link then
// resolves its references and looks for a cycle.
func buildGraph(root *jsonschema.Schema, base string) (*analyzer, error) {
	rootURI, err := url.Parse(base)
	if err != nil {
		return nil, err
	}
	a := &analyzer{g: &schemaGraph{}, byPtr: map[string]int{}, uris: map[string]int{}, ids: map[string]bool{},
		baseURI: map[int]*url.URL{}, anchors: map[int]map[string]anchor{}, dynamic: map[string][]int{}}
	switch root.Schema {
	case "http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft-07/schema#":
		a.draft7 = true
	}
	a.uris[rootURI.String()] = 0
	if _, err := a.walk(root, "", 0, rootURI, 0); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *analyzer) link() (*schemaGraph, error) {
	for i := range a.g.nodes {
		n := &a.g.nodes[i]
		for _, ref := range n.refs {
			t, _, err := a.resolve(n.base, ref)
			if err != nil {
				return nil, fmt.Errorf("$ref %q at %s: %v", ref, ptrName(n.ptr), err)
			}
			n.same = append(n.same, t)
		}
		for _, ref := range n.dynRefs {
			t, dyn, err := a.resolve(n.base, ref)
			if err != nil {
				return nil, fmt.Errorf("$dynamicRef %q at %s: %v", ref, ptrName(n.ptr), err)
			}
			if dyn != "" {
				// Resolved at validation time against the dynamic scope: any schema with that
				// dynamic anchor may be the target.
				n.same = append(n.same, a.dynamic[dyn]...)
			} else {
				n.same = append(n.same, t)
			}
		}
		n.refs, n.dynRefs = nil, nil
	}
	if cyc := a.g.sameInstanceCycle(); cyc != nil {
		names := make([]string, len(cyc))
		for i, c := range cyc {
			names[i] = ptrName(a.g.nodes[c].ptr)
		}
		return nil, fmt.Errorf("cyclic schema: %s applies itself to the same value without consuming any input (a $ref cycle through $ref/allOf/anyOf/oneOf/not/if/then/else/dependentSchemas only); recursion must go through properties, items or another keyword that steps into the value", strings.Join(names, " → "))
	}
	return a.g, nil
}

func ptrName(p string) string { return "#" + p }

// walk registers the subschema s at pointer ptr and its children; it returns s's index.
func (a *analyzer) walk(s *jsonschema.Schema, ptr string, base int, baseURI *url.URL, depth int) (int, error) {
	if len(a.g.nodes) >= MaxSchemaNodes {
		return 0, fmt.Errorf("more than %d subschemas", MaxSchemaNodes)
	}
	if depth > MaxSchemaDepth {
		return 0, fmt.Errorf("nested more than %d levels deep", MaxSchemaDepth)
	}
	idx := len(a.g.nodes)
	a.g.nodes = append(a.g.nodes, gnode{})
	a.byPtr[ptr] = idx
	if s.ID != "" && !(a.draft7 && s.Ref != "") {
		u, err := url.Parse(s.ID)
		if err != nil {
			return 0, err
		}
		if a.draft7 && u.Fragment != "" {
			a.setAnchor(base, strings.TrimPrefix(s.ID, "#"), idx, false)
		} else {
			baseURI = baseURI.ResolveReference(u)
			// Two subschemas with one URI (the spec forbids it) would leave which one a $ref
			// means to map order; the cycle check must follow the same one as the validator.
			if a.ids[baseURI.String()] {
				return 0, fmt.Errorf("two subschemas have the $id %s", baseURI)
			}
			a.ids[baseURI.String()] = true
			a.uris[baseURI.String()] = idx
			base = idx
		}
	}
	if base == idx || idx == 0 {
		a.baseURI[idx] = baseURI
	}
	if !a.draft7 {
		a.setAnchor(base, s.Anchor, idx, false)
		if s.DynamicAnchor != "" {
			a.setAnchor(base, s.DynamicAnchor, idx, true)
			a.dynamic[s.DynamicAnchor] = append(a.dynamic[s.DynamicAnchor], idx)
		}
	}
	n := gnode{ptr: ptr, base: base, additional: -1, propNames: -1, unevalProps: -1, items: -1, addItems: -1, contains: -1, unevalItems: -1, work: 1, msg: 48 + len(ptr)}
	if s.Ref != "" {
		n.refs = append(n.refs, s.Ref)
	}
	if s.DynamicRef != "" {
		n.dynRefs = append(n.dynRefs, s.DynamicRef)
	}
	one := func(k string, c *jsonschema.Schema) (int, error) {
		if c == nil {
			return -1, nil
		}
		return a.walk(c, ptr+"/"+esc(k), base, baseURI, depth+1)
	}
	list := func(k string, cs []*jsonschema.Schema) ([]int, error) {
		var out []int
		for i, c := range cs {
			if c == nil {
				continue
			}
			ci, err := a.walk(c, fmt.Sprintf("%s/%s/%d", ptr, esc(k), i), base, baseURI, depth+2)
			if err != nil {
				return nil, err
			}
			out = append(out, ci)
		}
		return out, nil
	}
	dict := func(k string, m map[string]*jsonschema.Schema) (map[string]int, error) {
		if len(m) == 0 {
			return nil, nil
		}
		out := make(map[string]int, len(m))
		for _, key := range sortedKeys(m) {
			if m[key] == nil {
				continue
			}
			ci, err := a.walk(m[key], ptr+"/"+esc(k)+"/"+esc(key), base, baseURI, depth+2)
			if err != nil {
				return nil, err
			}
			out[key] = ci
		}
		return out, nil
	}
	for _, l := range []struct {
		k  string
		cs []*jsonschema.Schema
	}{{"allOf", s.AllOf}, {"anyOf", s.AnyOf}, {"oneOf", s.OneOf}} {
		ids, err := list(l.k, l.cs)
		if err != nil {
			return 0, err
		}
		n.same = append(n.same, ids...)
		// anyOf/oneOf errors print each branch's $id or anchor.
		for _, c := range l.cs {
			if c != nil {
				n.msg += 32 + len(c.String())
			}
		}
	}
	for _, o := range []struct {
		k string
		c *jsonschema.Schema
	}{{"not", s.Not}, {"if", s.If}, {"then", s.Then}, {"else", s.Else}} {
		c, err := one(o.k, o.c)
		if err != nil {
			return 0, err
		}
		if c >= 0 {
			n.same = append(n.same, c)
		}
	}
	for _, d := range []struct {
		k string
		m map[string]*jsonschema.Schema
	}{{"dependentSchemas", s.DependentSchemas}, {"dependencies", s.DependencySchemas}} {
		m, err := dict(d.k, d.m)
		if err != nil {
			return 0, err
		}
		for key, c := range m {
			if n.dep == nil {
				n.dep = map[string][]int{}
			}
			n.dep[key] = append(n.dep[key], c)
		}
	}
	var err error
	if n.props, err = dict("properties", s.Properties); err != nil {
		return 0, err
	}
	pp, err := dict("patternProperties", s.PatternProperties)
	if err != nil {
		return 0, err
	}
	for _, key := range sortedKeys(pp) {
		n.patterns = append(n.patterns, pp[key])
	}
	if n.additional, err = one("additionalProperties", s.AdditionalProperties); err != nil {
		return 0, err
	}
	if n.propNames, err = one("propertyNames", s.PropertyNames); err != nil {
		return 0, err
	}
	if n.unevalProps, err = one("unevaluatedProperties", s.UnevaluatedProperties); err != nil {
		return 0, err
	}
	if n.itemsArr, err = list("prefixItems", s.PrefixItems); err != nil {
		return 0, err
	}
	l, err := list("items", s.ItemsArray)
	if err != nil {
		return 0, err
	}
	n.itemsArr = append(n.itemsArr, l...)
	if n.items, err = one("items", s.Items); err != nil {
		return 0, err
	}
	if n.addItems, err = one("additionalItems", s.AdditionalItems); err != nil {
		return 0, err
	}
	if n.contains, err = one("contains", s.Contains); err != nil {
		return 0, err
	}
	if n.unevalItems, err = one("unevaluatedItems", s.UnevaluatedItems); err != nil {
		return 0, err
	}
	// Never applied by the validator, but targets of $ref.
	if _, err := dict("$defs", s.Defs); err != nil {
		return 0, err
	}
	if _, err := dict("definitions", s.Definitions); err != nil {
		return 0, err
	}
	if _, err := one("contentSchema", s.ContentSchema); err != nil {
		return 0, err
	}
	// What a step scans and prints besides subschemas.
	n.work += len(s.Required) + len(s.DependentRequired) + len(s.DependencyStrings) + len(n.patterns)
	n.collects = s.AnyOf != nil || s.OneOf != nil || s.Not != nil || s.If != nil || s.Contains != nil
	// enum and const compare by walking their own values (a length mismatch ends a comparison),
	// so their cost is the schema's; their errors print the enum.
	if s.Enum != nil {
		b, _ := json.Marshal(s.Enum)
		n.msg += 2 * len(b)
		n.work += valuesIn(s.Enum, ValidationWorkAllowance)
	}
	if s.Const != nil {
		b, _ := json.Marshal(*s.Const)
		n.msg += 2 * len(b)
		n.work += valuesIn(*s.Const, ValidationWorkAllowance)
	}
	n.hashItems = s.UniqueItems
	if s.Pattern != "" {
		n.msg += len(s.Pattern)
		n.strCheck = true
	}
	n.strCheck = n.strCheck || s.MinLength != nil || s.MaxLength != nil
	a.g.nodes[idx] = n
	return idx, nil
}

func (a *analyzer) setAnchor(base int, name string, node int, dynamic bool) {
	if name == "" {
		return
	}
	if a.anchors[base] == nil {
		a.anchors[base] = map[string]anchor{}
	}
	if _, dup := a.anchors[base][name]; !dup {
		a.anchors[base][name] = anchor{node, dynamic}
	}
}

// resolve finds the subschema ref names, seen from a subschema whose base is base. dyn is the
// anchor's name when ref names a dynamic anchor.
func (a *analyzer) resolve(base int, ref string) (node int, dyn string, err error) {
	u, err := url.Parse(ref)
	if err != nil {
		return 0, "", err
	}
	full := a.baseURI[base].ResolveReference(u)
	frag := full.Fragment
	doc := *full
	doc.Fragment, doc.RawFragment = "", ""
	bi, ok := a.uris[doc.String()]
	if !ok {
		return 0, "", fmt.Errorf("no schema %s in this document", doc.String())
	}
	if frag != "" && !strings.HasPrefix(frag, "/") {
		an, ok := a.anchors[bi][frag]
		if !ok {
			return 0, "", fmt.Errorf("no anchor %q", frag)
		}
		if an.dynamic {
			dyn = frag
		}
		return an.node, dyn, nil
	}
	n, ok := a.byPtr[a.g.nodes[bi].ptr+frag]
	if !ok {
		return 0, "", fmt.Errorf("the pointer %q does not name a subschema the cycle check knows", frag)
	}
	return n, "", nil
}

// sameInstanceCycle returns a cycle of subschemas applied to the same instance, or nil.
// Iterative depth-first search: the graph comes from a tool folder.
func (g *schemaGraph) sameInstanceCycle() []int {
	const (
		white = iota
		grey
		black
	)
	color := make([]uint8, len(g.nodes))
	type frame struct {
		node, next int
		edges      []int
	}
	for start := range g.nodes {
		if color[start] != white {
			continue
		}
		stack := []frame{{node: start, edges: g.nodes[start].sameEdges()}}
		color[start] = grey
		for len(stack) > 0 {
			f := &stack[len(stack)-1]
			if f.next == len(f.edges) {
				color[f.node] = black
				stack = stack[:len(stack)-1]
				continue
			}
			c := f.edges[f.next]
			f.next++
			switch color[c] {
			case grey:
				var cyc []int
				for i := range stack {
					if stack[i].node == c {
						for _, fr := range stack[i:] {
							cyc = append(cyc, fr.node)
						}
						break
					}
				}
				return append(cyc, c)
			case white:
				color[c] = grey
				stack = append(stack, frame{node: c, edges: g.nodes[c].sameEdges()})
			}
		}
	}
	return nil
}

func (n *gnode) sameEdges() []int {
	if len(n.dep) == 0 {
		return n.same
	}
	out := slices.Clone(n.same)
	for _, key := range sortedKeys(n.dep) {
		out = append(out, n.dep[key]...)
	}
	return out
}

// cost walks the (subschema, value) pairs the validator could visit for v, with an explicit
// stack, and fails when its recursion depth, steps or message bytes could exceed the bounds.
// Over-approximates: every branch, every matching-or-not pattern.
func (g *schemaGraph) cost(v any, budget int) error {
	type frame struct {
		node    int
		v       any
		depth   int
		collect bool // under a keyword that evaluates every branch
	}
	stack := []frame{{0, v, 1, false}}
	work, bytes := 0, 0
	var collect bool
	push := func(n int, v any, d int) { stack = append(stack, frame{n, v, d, collect}) }
	for len(stack) > 0 {
		f := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n := &g.nodes[f.node]
		if f.depth > MaxValidationDepth {
			return fmt.Errorf("validation would recurse more than %d levels (at %s): the input is nested too deep", MaxValidationDepth, ptrName(n.ptr))
		}
		work += n.work
		w := n.msg
		switch x := f.v.(type) {
		case string:
			if n.strCheck {
				w += len(x) + 2
			}
		case jarr:
			if n.hashItems {
				work += valuesIn(x, budget-work+1)
			}
		}
		if f.collect {
			bytes += w * f.depth
		}
		if work > budget {
			return fmt.Errorf("validation would take more than %d steps", budget)
		}
		if bytes > MaxValidationBytes {
			return fmt.Errorf("validation errors could reach %d bytes", MaxValidationBytes)
		}
		d := f.depth + 1
		collect = f.collect || n.collects
		for _, c := range n.same {
			push(c, f.v, d)
		}
		switch x := f.v.(type) {
		case jobj:
			for key, cs := range n.dep {
				if _, ok := x[key]; ok {
					for _, c := range cs {
						push(c, f.v, d)
					}
				}
			}
			if n.props == nil && len(n.patterns) == 0 && n.additional < 0 && n.propNames < 0 && n.unevalProps < 0 {
				break
			}
			for key, e := range x {
				c, named := n.props[key]
				if named {
					push(c, e, d)
				}
				for _, c := range n.patterns {
					push(c, e, d)
				}
				if n.additional >= 0 && !named {
					push(n.additional, e, d)
				}
				if n.unevalProps >= 0 {
					push(n.unevalProps, e, d)
				}
				if n.propNames >= 0 {
					push(n.propNames, key, d)
				}
			}
		case jarr:
			if len(n.itemsArr) == 0 && n.items < 0 && n.addItems < 0 && n.contains < 0 && n.unevalItems < 0 {
				break
			}
			for i, e := range x {
				if i < len(n.itemsArr) {
					push(n.itemsArr[i], e, d)
				} else {
					if n.items >= 0 {
						push(n.items, e, d)
					}
					if n.addItems >= 0 {
						push(n.addItems, e, d)
					}
				}
				if n.contains >= 0 {
					push(n.contains, e, d)
				}
				if n.unevalItems >= 0 {
					push(n.unevalItems, e, d)
				}
			}
		}
		if len(stack) > budget {
			return fmt.Errorf("validation would take more than %d steps", budget)
		}
	}
	return nil
}

// jobj and jarr are a decoded input's objects and arrays. The validator only looks at their kinds
// (map, slice); their String methods keep its error messages short: it formats the instance with
// %v at every failing step, which for a large input multiplied by the branches of an anyOf
// could be gigabytes.
type (
	jobj map[string]any
	jarr []any
)

func (o jobj) String() string { return fmt.Sprintf("an object with %d properties", len(o)) }
func (a jarr) String() string { return fmt.Sprintf("an array of %d items", len(a)) }

// previewable converts v's objects and arrays to jobj and jarr, in place, with an explicit
// stack, and counts its values.
func previewable(v any) (any, int) {
	root := []any{v}
	stack := []any{jarr(root)}
	n := 0
	for len(stack) > 0 {
		c := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		switch x := c.(type) {
		case jobj:
			n += len(x)
			for k, e := range x {
				if conv, ok := convert(e); ok {
					x[k] = conv
					stack = append(stack, conv)
				}
			}
		case jarr:
			n += len(x)
			for i, e := range x {
				if conv, ok := convert(e); ok {
					x[i] = conv
					stack = append(stack, conv)
				}
			}
		}
	}
	return root[0], n
}

func convert(v any) (any, bool) {
	switch x := v.(type) {
	case map[string]any:
		return jobj(x), true
	case []any:
		return jarr(x), true
	}
	return nil, false
}

// valuesIn counts the values in v (decoded JSON, converted or not), stopping at limit: the length
// of a walk over the whole value.
func valuesIn(v any, limit int) int {
	n := 0
	stack := []any{v}
	for len(stack) > 0 && n < limit {
		c := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n++
		switch x := c.(type) {
		case jobj:
			for _, e := range x {
				stack = append(stack, e)
			}
		case map[string]any:
			for _, e := range x {
				stack = append(stack, e)
			}
		case jarr:
			stack = append(stack, x...)
		case []any:
			stack = append(stack, x...)
		}
	}
	return n
}

func esc(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.NewReplacer("~", "~0", "/", "~1").Replace(s)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
