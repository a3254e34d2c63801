package axoiso

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/axocoatl/isolation/catalog"
)

// SecretSource says where a secret's value comes from: exactly one of File (read when the
// executor is built; one trailing newline dropped) and Env (a variable of the daemon's own
// environment, which must be set).
type SecretSource struct {
	File string `json:"file,omitempty"`
	Env  string `json:"env,omitempty"`
}

// maxSecretFile bounds a secret file (a value is at most catalog.MaxEnvValueBytes).
const maxSecretFile = catalog.MaxEnvValueBytes + 1

// checkSecrets returns the problems of the secrets section, each naming its key and never a value.
func (c Config) checkSecrets() []string {
	var probs []string
	for tool, vars := range c.Secrets {
		if err := catalog.ValidateName(tool); err != nil {
			probs = append(probs, fmt.Sprintf("secrets.%s: %v", tool, err))
			continue
		}
		if len(vars) > catalog.MaxEnvVars {
			probs = append(probs, fmt.Sprintf("secrets.%s: %d variables, at most %d", tool, len(vars), catalog.MaxEnvVars))
		}
		for name, src := range vars {
			key := "secrets." + tool + "." + name
			if err := catalog.CheckEnvName(name); err != nil {
				probs = append(probs, fmt.Sprintf("secrets.%s: %v", tool, err))
				continue
			}
			switch {
			case (src.File == "") == (src.Env == ""):
				probs = append(probs, key+`: give exactly one of "file" and "env"`)
			case src.Env != "" && catalog.CheckEnvName(src.Env) != nil:
				probs = append(probs, fmt.Sprintf("%s.env: %q is not a variable name", key, truncate(src.Env, 40)))
			case src.File != "" && !strings.HasPrefix(src.File, "/"):
				probs = append(probs, fmt.Sprintf("%s.file: %q is not an absolute path", key, truncate(src.File, 80)))
			}
		}
	}
	return probs
}

// secretValues reads every secret: tool → variable → value. Errors name the key and the file or
// variable, never a value.
func (c Config) secretValues() (map[string]map[string]string, error) {
	if len(c.Secrets) == 0 {
		return nil, nil
	}
	if probs := c.checkSecrets(); len(probs) > 0 {
		return nil, fmt.Errorf("config: %s", strings.Join(probs, "; "))
	}
	out := make(map[string]map[string]string, len(c.Secrets))
	for tool, vars := range c.Secrets {
		m := make(map[string]string, len(vars))
		for name, src := range vars {
			key := "secrets." + tool + "." + name
			var v string
			if src.Env != "" {
				val, ok := os.LookupEnv(src.Env)
				if !ok || val == "" {
					return nil, fmt.Errorf("config %s: $%s is not set in the daemon's environment", key, src.Env)
				}
				v = val
			} else {
				val, err := readSecretFile(src.File)
				if err != nil {
					return nil, fmt.Errorf("config %s: %w", key, err)
				}
				v = val
			}
			if err := catalog.CheckEnvValue(v); err != nil {
				return nil, fmt.Errorf("config %s: %v", key, err)
			}
			m[name] = v
		}
		out[tool] = m
	}
	return out, nil
}

// readSecretFile reads a secret: a regular file (not a FIFO that would block us), at most
// maxSecretFile bytes, one trailing newline dropped.
func readSecretFile(path string) (string, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return "", fmt.Errorf("file %s: %v", path, pe.Err)
		}
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("file %s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("file %s: %v", path, err)
	}
	if len(b) > maxSecretFile {
		return "", fmt.Errorf("file %s is over %d bytes", path, maxSecretFile)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	return s, nil
}
