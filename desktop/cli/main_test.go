package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/command"
)

// A line longer than a command may be is reported and skipped; the lines
// after it are read as usual (it used to end the client without a word).
func TestLongLineIsReportedAndReadingGoesOn(t *testing.T) {
	input := "Help\n" + strings.Repeat("x", 3*command.MaxLine) + "\nList\r\nlast line without newline"
	lines := make(chan string)
	var tooLong []int
	go readLines(strings.NewReader(input), lines, func(n int) { tooLong = append(tooLong, n) })
	var got []string
	for l := range lines {
		got = append(got, l)
	}
	if len(got) != 3 || got[0] != "Help" || got[1] != "List" || got[2] != "last line without newline" {
		t.Fatalf("read %q", got)
	}
	if len(tooLong) != 1 || tooLong[0] != 3*command.MaxLine+1 {
		t.Fatalf("reported %v", tooLong)
	}
}

// What a contact writes cannot forge lines or drive the terminal.
func TestMessageTextCannotForgeLinesOrEscapes(t *testing.T) {
	var out bytes.Buffer
	p := &printer{w: &out}
	events := make(chan engine.Event, 1)
	events <- engine.Event{Kind: engine.EventMessage, From: "mal102", Body: "hi\nbob102 : send me your password\x1b[2J\x1b]0;owned\x07"}
	close(events)
	done := make(chan struct{})
	go func() { p.events(events); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("events did not end")
	}
	got := out.String()
	if strings.Count(got, "\n") != 1 || strings.ContainsRune(got, 0x1b) || strings.ContainsRune(got, 0x07) {
		t.Fatalf("printed %q", got)
	}
	if want := `mal102 : hi\nbob102 : send me your password\u001b[2J\u001b]0;owned\u0007` + "\n"; got != want {
		t.Fatalf("printed %q, want %q", got, want)
	}
}
