package store

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// Raft logs hclog.Fmt("%+v", servers); it must reach slog formatted, not
// as "[%+v [...]]".
func TestRaftLogArgumentsAreFormatted(t *testing.T) {
	var out bytes.Buffer
	l := hcLogger(slog.New(slog.NewTextHandler(&out, nil)), "raft")
	type server struct{ ID, Address string }
	l.Info("initial configuration", "servers", hclog.Fmt("%+v", []server{{"c1", "127.0.0.1:1"}}), "index", hclog.Hex(255), "name", hclog.Quote("a b"))
	got := out.String()
	for _, want := range []string{`servers="[{ID:c1 Address:127.0.0.1:1}]"`, "index=0xff", `name="\"a b\""`} {
		if !strings.Contains(got, want) {
			t.Errorf("log line %q lacks %s", got, want)
		}
	}
	if strings.Contains(got, "%+v") {
		t.Errorf("a format verb reached the log: %q", got)
	}
}
