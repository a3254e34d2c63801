package catalog

import (
	"fmt"
	"regexp"
	"unicode/utf8"
)

// Bounds of a tool's environment (tool.json env, and the secrets an operator grants a tool).
const (
	MaxEnvVars       = 64
	MaxEnvValueBytes = 4096
)

var envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// CheckEnvName refuses a variable name a shell could not export (letters, digits and _, not
// starting with a digit, at most 128 bytes).
func CheckEnvName(name string) error {
	if !envNameRE.MatchString(name) {
		return fmt.Errorf("%q is not a variable name (letters, digits and _, not starting with a digit, at most 128)", truncate(name, 40))
	}
	return nil
}

// CheckEnvValue refuses a value that cannot travel in an environment (NUL) or is not UTF-8 text
// or over MaxEnvValueBytes. The value itself is never quoted: it may be a secret.
func CheckEnvValue(v string) error {
	switch {
	case len(v) > MaxEnvValueBytes:
		return fmt.Errorf("value of %d bytes is over %d", len(v), MaxEnvValueBytes)
	case !utf8.ValidString(v):
		return fmt.Errorf("value is not UTF-8")
	}
	for i := 0; i < len(v); i++ {
		if v[i] == 0 {
			return fmt.Errorf("value holds a NUL byte")
		}
	}
	return nil
}

// checkEnv checks tool.json's env.
func checkEnv(env map[string]string) error {
	if len(env) > MaxEnvVars {
		return fmt.Errorf("env: %d variables, at most %d", len(env), MaxEnvVars)
	}
	for k, v := range env {
		if err := CheckEnvName(k); err != nil {
			return fmt.Errorf("env: %v", err)
		}
		if err := CheckEnvValue(v); err != nil {
			return fmt.Errorf("env %s: %v", k, err)
		}
	}
	return nil
}
