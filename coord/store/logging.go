package store

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/hashicorp/go-hclog"
)

// hcLogger hands hashicorp/raft's hclog output to slog, so a coordinator has
// one structured log.
func hcLogger(log *slog.Logger, name string) hclog.Logger {
	l := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: name, Output: io.Discard, Level: hclog.Info})
	l.RegisterSink(slogSink{log})
	return l
}

type slogSink struct{ log *slog.Logger }

func (s slogSink) Accept(name string, level hclog.Level, msg string, args ...interface{}) {
	var lv slog.Level
	switch {
	case level <= hclog.Debug:
		lv = slog.LevelDebug
	case level == hclog.Info:
		lv = slog.LevelInfo
	case level == hclog.Warn:
		lv = slog.LevelWarn
	default:
		lv = slog.LevelError
	}
	for i, a := range args {
		args[i] = hcValue(a)
	}
	s.log.Log(context.Background(), lv, msg, append([]any{"part", name}, args...)...)
}

// hcValue renders hclog's formatting wrappers the way hclog would; slog
// would print hclog.Fmt("%+v", x) as its format string and arguments.
func hcValue(v any) any {
	switch x := v.(type) {
	case hclog.Format:
		if len(x) > 0 {
			if f, ok := x[0].(string); ok {
				return fmt.Sprintf(f, x[1:]...)
			}
		}
		return fmt.Sprint(x...)
	case hclog.Hex:
		return fmt.Sprintf("0x%x", int(x))
	case hclog.Octal:
		return fmt.Sprintf("0%o", int(x))
	case hclog.Binary:
		return fmt.Sprintf("0b%b", int(x))
	case hclog.Quote:
		return fmt.Sprintf("%q", string(x))
	}
	return v
}

// badgerLogger hands badger's printf-style logs to slog; badger's info
// chatter is demoted to debug.
type badgerLogger struct{ log *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...interface{})   { b.log.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...interface{}) { b.log.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...interface{})    { b.log.Debug(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Debugf(f string, a ...interface{})   { b.log.Debug(fmt.Sprintf(f, a...)) }
