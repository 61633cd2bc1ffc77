package server

import (
	"errors"
	"testing"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store"
)

// Issue 12, point 9: streams per account are capped, and an event reaches
// exactly the streams it concerns.
func TestHubCapsStreamsAndDeliversByIndex(t *testing.T) {
	h := NewHub(func(string) []string { return []string{"bob102"} })
	var subs []*Subscriber
	for range MaxStreamsPerLogin {
		s, err := h.Subscribe("alice101", "s-alice101", []string{"carol103"})
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if _, err := h.Subscribe("alice101", "s-alice101", nil); !errors.Is(err, ErrTooManyStreams) {
		t.Fatalf("stream %d for one account: %v", MaxStreamsPerLogin+1, err)
	}
	h.Unsubscribe(subs[0])
	if _, err := h.Subscribe("alice101", "s-alice101", nil); err != nil {
		t.Fatalf("a closed stream's place was not given back: %v", err)
	}
	bob, _ := h.Subscribe("bob102", "s-bob102", nil)
	h.Publish(store.Event{Mail: &store.MailEvent{To: "bob102", Seq: 1, From: "x"}})
	h.Publish(store.Event{Keys: &api.Keys{LoginId: "carol103"}})
	h.Publish(store.Event{Group: &store.GroupEvent{Name: "g", LoginID: "dave104", Change: "joined"}})
	if len(bob.C) != 2 {
		t.Fatalf("bob got %d events, want his mail and his group's change", len(bob.C))
	}
	if len(subs[1].C) != 1 || (<-subs[1].C).GetKeys() == nil {
		t.Fatal("a watcher of carol103 did not get exactly her key change")
	}
}

// A log-out ends that session's streams at once, and only its: the
// account's other sessions (another device) go on.
func TestHubEndsTheStreamsOfARevokedSession(t *testing.T) {
	h := NewHub(nil)
	phone, _ := h.Subscribe("alice101", "phone", nil)
	laptop, _ := h.Subscribe("alice101", "laptop", nil)
	h.Publish(store.Event{Revoked: []byte("phone")})
	if _, open := <-phone.C; open || !h.Revoked(phone) {
		t.Fatal("the logged-out session's stream did not end as revoked")
	}
	if h.Revoked(laptop) {
		t.Fatal("another session's stream was revoked")
	}
	h.Publish(store.Event{Mail: &store.MailEvent{To: "alice101", Seq: 1}})
	if len(laptop.C) != 1 {
		t.Fatal("the other session's stream stopped getting events")
	}
	h.Unsubscribe(phone) // the handler's deferred call: no panic, nothing left
	h.Unsubscribe(laptop)
	if len(h.bySession) != 0 || len(h.byLogin) != 0 {
		t.Fatalf("indexes not emptied: %v %v", h.bySession, h.byLogin)
	}
}
