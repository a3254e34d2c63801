package oci

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/sirupsen/logrus"
)

var logrusOnce sync.Once

// routeLibcontainerLogs sends what libcontainer logs through logrus' global logger (warnings on
// failed starts and the like, written to stderr by default) to log instead, at Debug level for
// logrus' info and warnings and Warn for its errors: the sandbox reports every failure as an
// error of its own. logrus is global, so the first Sandbox's logger gets them; a program that
// configured logrus' output itself is left alone.
func routeLibcontainerLogs(log *slog.Logger) {
	logrusOnce.Do(func() {
		std := logrus.StandardLogger()
		if std.Out != os.Stderr {
			return
		}
		std.SetOutput(io.Discard)
		std.AddHook(slogHook{log.With("component", "libcontainer")})
	})
}

type slogHook struct{ log *slog.Logger }

func (slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	lvl := slog.LevelDebug
	if e.Level <= logrus.ErrorLevel {
		lvl = slog.LevelWarn
	}
	attrs := make([]slog.Attr, 0, len(e.Data))
	for k, v := range e.Data {
		attrs = append(attrs, slog.Any(k, v))
	}
	h.log.LogAttrs(context.Background(), lvl, e.Message, attrs...)
	return nil
}
