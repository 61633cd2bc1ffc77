package engine

import (
	"fmt"
	"testing"
	"time"
)

func next(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("the subscription ended")
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5 s")
	}
	return Event{}
}

// Each subscriber gets every event, numbered, in order, from when it
// subscribed.
func TestSubscribersGetNumberedEvents(t *testing.T) {
	e := offline(t)
	e.emit(Event{Kind: EventStatus, Text: "before anyone listened"})
	a, b := e.Subscribe(), e.Subscribe()
	defer a.Close()
	defer b.Close()
	for i := 0; i < 100; i++ {
		e.emit(Event{Kind: EventStatus, Text: fmt.Sprint(i)})
	}
	for _, sub := range []*Subscription{a, b} {
		for i := 0; i < 100; i++ {
			ev := next(t, sub.Events())
			if ev.Text != fmt.Sprint(i) || ev.Seq != uint64(i+2) {
				t.Fatalf("event %d: %q numbered %d", i, ev.Text, ev.Seq)
			}
		}
	}
	// Events (the one-reader form) starts with everything kept.
	if ev := next(t, e.Events()); ev.Text != "before anyone listened" || ev.Seq != 1 {
		t.Fatalf("Events began with %+v", ev)
	}
}

// A subscriber that stops reading holds nobody up; when it reads again it
// learns how many events it missed, then goes on.
func TestSlowSubscriberLearnsWhatItMissed(t *testing.T) {
	e := offline(t)
	slow, fast := e.Subscribe(), e.Subscribe()
	defer slow.Close()
	defer fast.Close()
	total := eventLogSize + 500
	// The fast one reads each event as it comes: the emitter waits for
	// it (never for the slow one), so it cannot fall behind by chance.
	got := make(chan Event)
	go func() {
		for ev := range fast.Events() {
			got <- ev
		}
	}()
	for i := 0; i < total; i++ {
		e.emit(Event{Kind: EventStatus, Text: fmt.Sprint(i)})
		if ev := next(t, got); ev.Kind != EventStatus || ev.Text != fmt.Sprint(i) {
			t.Fatalf("the fast subscriber got %+v for event %d", ev, i)
		}
	}
	// The slow one took what its channel holds, then missed some.
	var missed uint64
	seen := 0
	for seen+int(missed) < total {
		ev := next(t, slow.Events())
		switch ev.Kind {
		case EventMissed:
			missed += ev.Missed
		case EventStatus:
			seen++
			if want := fmt.Sprint(ev.Seq - 1); ev.Text != want {
				t.Fatalf("event %d says %q", ev.Seq, ev.Text)
			}
		}
	}
	if missed == 0 || seen+int(missed) != total {
		t.Fatalf("saw %d, missed %d, of %d", seen, missed, total)
	}
}

func TestCloseEndsSubscriptions(t *testing.T) {
	e := offline(t)
	sub := e.Subscribe()
	e.Close()
	select {
	case _, ok := <-sub.Events():
		for ok {
			_, ok = <-sub.Events()
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the subscription did not end with the engine")
	}
}
