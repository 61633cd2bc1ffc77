package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/e2em/e2em/desktop/engine/command"
	"github.com/e2em/e2em/internal/pki"
)

// offline is an engine with a profile and no cluster (none is dialled
// until a call needs it).
func offline(t *testing.T) *Engine {
	t.Helper()
	dir := t.TempDir()
	if _, _, err := pki.LoadOrCreateCA(dir); err != nil {
		t.Fatal(err)
	}
	ca, _ := pki.CAFiles(dir)
	e, err := New(Config{Profile: t.TempDir(), LB: "127.0.0.1:1", CAFile: ca,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func do(t *testing.T, e *Engine, line string) (Result, error) {
	t.Helper()
	c, err := command.Parse(line)
	if err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	return e.Do(context.Background(), c)
}

func TestDoAnswersWhatNeedsNoCluster(t *testing.T) {
	e := offline(t)
	r, err := do(t, e, "Help")
	if err != nil || r.Command != "Help" || !strings.Contains(r.Text, "Send_file <file> <recipient>") {
		t.Fatalf("Help: %+v %v", r, err)
	}
	if r, err := do(t, e, "Transfers"); err != nil || r.Text != "No transfers." || len(r.Transfers) != 0 {
		t.Fatalf("Transfers: %+v %v", r, err)
	}
	if r, err := do(t, e, "quit"); err != nil || !r.Quit || r.Text != "Bye!" {
		t.Fatalf("Quit: %+v %v", r, err)
	}
	// What needs a log-in says so, in the command's name.
	for line, name := range map[string]string{"Send bob hi": "Send", "Send_file a.txt bob": "Send_file",
		"Show_my_groups": "Show_my_groups", "Cancel abcd": "Cancel", "Sign up a 1 pw": "Sign up"} {
		r, err := do(t, e, line)
		if r.Command != name {
			t.Errorf("%q: command %q, want %q", line, r.Command, name)
		}
		if name != "Sign up" && !errors.Is(err, ErrNotLoggedIn) {
			t.Errorf("%q: %v, want ErrNotLoggedIn", line, err)
		}
		if err == nil || r.Text != "" {
			t.Errorf("%q: a failure with text %q", line, r.Text)
		}
	}
}

// Every command the parser knows has a classic name and is handled.
func TestEveryCommandHasANameAndAHandler(t *testing.T) {
	e := offline(t)
	for _, k := range command.Order {
		if commandName(k) == "" || strings.Contains(commandName(k), "<") {
			t.Errorf("kind %d: name %q", k, commandName(k))
		}
		c := &command.Command{Kind: k, Groups: []string{"g"}}
		if k == command.Login || k == command.SignUp {
			continue // they would dial the (absent) cluster
		}
		if _, err := e.Do(context.Background(), c); errors.Is(err, ErrUnhandled) {
			t.Errorf("%s is not handled", commandName(k))
		}
	}
}

// Errors carry their kind through wrapping, and their text has no words
// of one face (commands to type, flags).
func TestErrorsHaveKinds(t *testing.T) {
	e := offline(t)
	_, err := do(t, e, "Send bob hi")
	if KindOf(err) != KindNotLoggedIn || KindOf(fmt.Errorf("send: %w", err)) != KindNotLoggedIn {
		t.Fatalf("not logged in: kind %v", KindOf(err))
	}
	if KindOf(&KeyChangedError{Contact: "bob102"}) != KindKeyChanged || KindOf(errors.New("x")) != KindOther {
		t.Fatal("kinds of other errors")
	}
	for _, err := range []error{ErrNotLoggedIn, ErrLoggedIn} {
		if strings.ContainsAny(err.Error(), "<;") || strings.Contains(err.Error(), "Login") {
			t.Errorf("%q speaks like one face", err)
		}
	}
}

func TestPrintableKeepsTextOnOneLine(t *testing.T) {
	for in, want := range map[string]string{
		"hello":              "hello",
		"résumé 日本語 👋":       "résumé 日本語 👋",
		"a\nb":               `a\nb`,
		"tab\there":          `tab\there`,
		"\x1b[31mred":        `\u001b[31mred`,
		"bidi\u202etxt.exe":  `bidi\u202etxt.exe`,
		"c1\u0085next\u009b": `c1\u0085next\u009b`,
	} {
		if got := Printable(in); got != want {
			t.Errorf("Printable(%q) = %q, want %q", in, got, want)
		}
	}
	m := Message{From: "mal102", Body: "x\ny", Sent: time.Unix(0, 0).UTC()}
	if strings.Contains(m.Line(), "\n") {
		t.Fatalf("a history line holds a newline: %q", m.Line())
	}
}
