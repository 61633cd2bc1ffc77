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

// BenchmarkHistoryPages is the profile's share of opening and scrolling a
// long conversation (issue 11's 100,000 messages): the newest page, and
// every page back to the first.
func BenchmarkHistoryPages(b *testing.B) {
	s := open(b)
	const total, page = 100_000, 200
	batch := make([]*Message, 0, 1000)
	flush := func() {
		s.update(func(txn *badger.Txn) error {
			for _, m := range batch {
				if _, err := s.addMessage(txn, m); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
	}
	for i := 0; i < total; i++ {
		batch = append(batch, &Message{ID: fmt.Sprint(i), Peer: "bob102", From: "bob102", Body: fmt.Sprintf("message number %d, about a line long", i), Sent: time.Now()})
		if len(batch) == cap(batch) {
			flush()
		}
	}
	flush()
	b.Run("newest-page", func(b *testing.B) {
		for b.Loop() {
			if ms, err := s.HistoryBefore("@bob102", 0, page); err != nil || len(ms) != page {
				b.Fatal(len(ms), err)
			}
		}
	})
	b.Run("all-pages", func(b *testing.B) {
		for b.Loop() {
			n, before := 0, uint64(0)
			for {
				ms, err := s.HistoryBefore("@bob102", before, page)
				if err != nil {
					b.Fatal(err)
				}
				if len(ms) == 0 {
					break
				}
				n += len(ms)
				before = ms[0].StoredSeq
			}
			if n != total {
				b.Fatalf("paged through %d", n)
			}
		}
	})
}

// A group message's id is the sender's choice: one member reusing another
// member's id does not make the real message a repeat (issue 12, point 7).
func TestGroupMessageIDsBelongToTheirSender(t *testing.T) {
	s := open(t)
	add := func(from, body string) bool {
		t.Helper()
		added, err := s.AddMessage(&Message{ID: "id-alice-chose", Peer: from, Group: "club", From: from, Body: body, Sent: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		return added
	}
	if !add("mal666", "forged first, under alice's id") {
		t.Fatal("mallory's message was not stored")
	}
	if !add("alice101", "the real one") {
		t.Fatal("alice's message was dropped as a repeat of mallory's")
	}
	if add("alice101", "the real one") {
		t.Fatal("alice's message, delivered twice, was stored twice")
	}
	h, _ := s.History("#club", 10)
	if len(h) != 2 {
		t.Fatalf("history holds %d messages", len(h))
	}
}
