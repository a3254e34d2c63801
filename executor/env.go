package executor

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/axocoatl/isolation"
	"github.com/axocoatl/isolation/catalog"
	"github.com/axocoatl/isolation/sandbox"
)

// Redacted replaces a secret's value wherever a tool's stdout or stderr tail would show it.
const Redacted = "[redacted]"

// env is a tool's environment for a call: its tool.json env, then the secrets granted to it
// (a secret wins over a plain value of the same name), sorted by name.
func (e *Executor) env(tool *catalog.Tool) []string {
	secrets := e.cfg.Secrets[tool.Name]
	if len(tool.Env) == 0 && len(secrets) == 0 {
		return nil
	}
	m := make(map[string]string, len(tool.Env)+len(secrets))
	for k, v := range tool.Env {
		m[k] = v
	}
	for k, v := range secrets {
		m[k] = v
	}
	env := make([]string, 0, len(m))
	for k, v := range m {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}

// redactor hides the values of the secrets granted to a tool in what the call returns besides
// its output (stdout and stderr tails, error text): a tool that prints its secret, or a failure
// that echoes it, must not hand it to every caller, log and terminal. A tool that writes it into
// output.json returns it on purpose.
func (e *Executor) redactor(tool string) func(string) string {
	secrets := e.cfg.Secrets[tool]
	if len(secrets) == 0 {
		return func(s string) string { return s }
	}
	vals := make([]string, 0, len(secrets))
	for _, v := range secrets {
		if v != "" {
			vals = append(vals, v)
		}
	}
	// Longest first, so that a secret containing another is hidden whole.
	sort.Slice(vals, func(i, j int) bool { return len(vals[i]) > len(vals[j]) })
	return func(s string) string {
		for _, v := range vals {
			s = strings.ReplaceAll(s, v, Redacted)
		}
		return s
	}
}

// redactOutcome hides secrets in an outcome's tails and, when err is an *isolation.Error, in its
// message and tails.
func redactOutcome(redact func(string) string, out *sandbox.Outcome, err error) {
	out.Stdout, out.Stderr = redact(out.Stdout), redact(out.Stderr)
	var ie *isolation.Error
	if errors.As(err, &ie) {
		ie.Message, ie.Stdout, ie.Stderr = redact(ie.Message), redact(ie.Stdout), redact(ie.Stderr)
	}
}

// checkSecrets refuses a grant to an invalid tool name, a bad variable name or a value that cannot
// travel in an environment; errors name the tool and variable, never the value.
func checkSecrets(secrets map[string]map[string]string) error {
	for tool, vars := range secrets {
		if err := catalog.ValidateName(tool); err != nil {
			return fmt.Errorf("secrets: %w", err)
		}
		if len(vars) > catalog.MaxEnvVars {
			return fmt.Errorf("secrets.%s: %d variables, at most %d", tool, len(vars), catalog.MaxEnvVars)
		}
		for k, v := range vars {
			if err := catalog.CheckEnvName(k); err != nil {
				return fmt.Errorf("secrets.%s: %v", tool, err)
			}
			if err := catalog.CheckEnvValue(v); err != nil {
				return fmt.Errorf("secrets.%s.%s: %v", tool, k, err)
			}
		}
	}
	return nil
}
