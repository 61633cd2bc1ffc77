package store

import (
	"fmt"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

func convs(t *testing.T, s *Store) map[string]ConversationInfo {
	t.Helper()
	list, err := s.Conversations()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]ConversationInfo{}
	for _, c := range list {
		out[c.Key] = c
	}
	return out
}

func TestConversationsCountUnreadUntilMarkedRead(t *testing.T) {
	s := open(t)
	add := func(id, peer, group string, outgoing bool) {
		t.Helper()
		m := &Message{ID: id, Peer: peer, Group: group, From: peer, Body: id, Sent: time.Now(), Outgoing: outgoing}
		if _, err := s.AddMessage(m); err != nil {
			t.Fatal(err)
		}
	}
	add("b1", "bob102", "", false)
	add("b2", "bob102", "", false)
	add("me1", "bob102", "", true) // yours never count
	add("g1", "cat103", "Club", false)
	cs := convs(t, s)
	if len(cs) != 2 || cs["@bob102"].Unread != 2 || cs["@bob102"].Last.ID != "me1" || cs["#club"].Unread != 1 {
		t.Fatalf("conversations: %+v", cs)
	}
	if err := s.MarkRead("@bob102"); err != nil {
		t.Fatal(err)
	}
	add("b3", "bob102", "", false)
	if cs := convs(t, s); cs["@bob102"].Unread != 1 || cs["@bob102"].Last.ID != "b3" || cs["#club"].Unread != 1 {
		t.Fatalf("after reading bob: %+v", cs)
	}
}

func TestHistoryBeforePagesBackwards(t *testing.T) {
	s := open(t)
	for i := 0; i < 25; i++ {
		s.AddMessage(&Message{ID: fmt.Sprint(i), Peer: "bob102", From: "bob102", Body: fmt.Sprint(i), Sent: time.Now()})
	}
	var got []string
	before := uint64(0)
	for {
		page, err := s.HistoryBefore("@bob102", before, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for i := len(page) - 1; i >= 0; i-- {
			got = append(got, page[i].Body)
		}
		before = page[0].StoredSeq
	}
	if len(got) != 25 || got[0] != "24" || got[24] != "0" {
		t.Fatalf("pages gave %v", got)
	}
}

// A profile written before the conversation index gets one when opened.
func TestConversationIndexIsBuiltForOldProfiles(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.AddMessage(&Message{ID: "x", Peer: "bob102", From: "bob102", Body: "old", Sent: time.Now()})
	s.db.Update(func(txn *badger.Txn) error {
		txn.Delete([]byte(prefixConvIndex + "@bob102"))
		return txn.Delete([]byte(keyConvIndexed))
	})
	if len(convs(t, s)) != 0 {
		t.Fatal("the index was not removed")
	}
	s.Close()
	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if cs := convs(t, s); cs["@bob102"].Last == nil || cs["@bob102"].Last.Body != "old" {
		t.Fatalf("after reopening: %+v", cs)
	}
}
