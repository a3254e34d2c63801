package ociimage

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Image labels a bundle-only tool takes its description and input schema from.
const (
	LabelDescription = "org.opencontainers.image.description"
	LabelInputSchema = "io.axocoatl.input-schema"
)

// maxManifest bounds a kept tool.json (the catalog's own bound).
const maxManifest = 1 << 20

// writeManifest gives the new bundle tmp its tool.json: with replace, the one dest holds (written
// by hand: its description, schema and limits are not the image's to overwrite); otherwise, when
// the image has the labels, one made from them (runtime ContainerImage).
func writeManifest(tmp, dest string, cfg *v1.ConfigFile, replace bool) error {
	if replace {
		b, err := readRegular(filepath.Join(dest, "tool.json"))
		switch {
		case err == nil:
			return os.WriteFile(filepath.Join(tmp, "tool.json"), b, 0o644)
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("keeping %s: %w", filepath.Join(dest, "tool.json"), err)
		}
	}
	if cfg == nil {
		return nil
	}
	labels := cfg.Config.Labels
	desc, schema := strings.TrimSpace(labels[LabelDescription]), strings.TrimSpace(labels[LabelInputSchema])
	if desc == "" && schema == "" {
		return nil
	}
	m := map[string]any{"runtime": "ContainerImage"}
	if desc != "" {
		m["description"] = desc
	}
	if schema != "" {
		var obj map[string]any
		if err := json.Unmarshal([]byte(schema), &obj); err != nil {
			return fmt.Errorf("image label %s is not a JSON object: %v", LabelInputSchema, err)
		}
		m["input_schema"] = json.RawMessage(schema)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(tmp, "tool.json"), append(b, '\n'), 0o644)
}

// readRegular reads a regular file (not a FIFO, not through a final symlink) of at most
// maxManifest bytes.
func readRegular(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	b, err := io.ReadAll(io.LimitReader(f, maxManifest+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxManifest {
		return nil, fmt.Errorf("over %d bytes", maxManifest)
	}
	return b, nil
}
