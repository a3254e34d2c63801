//go:build !linux

package ociimage

import (
	"context"
	"errors"
	"io"
	"log/slog"
)

var errNotLinux = errors.New("ociimage: building bundles needs Linux")

type unpacker struct{ skippedDevices int }

func newUnpacker(string, *slog.Logger) (*unpacker, error)    { return nil, errNotLinux }
func (u *unpacker) Close() error                             { return nil }
func (u *unpacker) finish() error                            { return errNotLinux }
func (u *unpacker) layer(context.Context, io.Reader) error   { return errNotLinux }
func install(tmp, dest string, replace bool) (string, error) { return "", errNotLinux }
