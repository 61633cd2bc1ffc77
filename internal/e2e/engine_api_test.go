package e2e

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/e2em/e2em/desktop/engine"
	ct "github.com/e2em/e2em/internal/clustertest"
)

// person is an in-process engine, logged in, with its own subscription,
// as the desktop app holds one.
type person struct {
	*engine.Engine
	login string
	sub   *engine.Subscription
}

func newPerson(t *testing.T, c *ct.Cluster, name, roll string) *person {
	t.Helper()
	eng, err := engine.New(engine.Config{Profile: filepath.Join(t.TempDir(), name), LB: c.Layout.LB, CAFile: c.CAFile(),
		Listen: "127.0.0.1", Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	p := &person{Engine: eng, login: name + roll, sub: eng.Subscribe()}
	ctx := context.Background()
	if _, err := eng.SignUp(ctx, name, roll, "password123"); err != nil {
		t.Fatal(err)
	}
	if err := eng.Login(ctx, p.login, "password123"); err != nil {
		t.Fatal(err)
	}
	return p
}

// await reads p's events until one matches.
func (p *person) await(t *testing.T, what string, match func(engine.Event) bool) engine.Event {
	t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case ev, ok := <-p.sub.Events():
			if !ok {
				t.Fatalf("%s: events ended while waiting for %s", p.login, what)
			}
			if match(ev) {
				return ev
			}
		case <-deadline:
			t.Fatalf("%s: no %s within %v", p.login, what, wait)
		}
	}
}

// What a window needs from the engine: conversations with unread counts
// and presence, read marks, history in pages, contacts.
func TestEngineGivesAWindowWhatItShows(t *testing.T) {
	c := sharedCluster(t)
	ctx := context.Background()
	a, b := newPerson(t, c, "wia", "981"), newPerson(t, c, "wib", "982")
	// Status, as a window's status bar shows it.
	b.await(t, "the log-in", func(ev engine.Event) bool { return ev.Kind == engine.EventLogin && ev.Text == engine.StatusLoggedIn })
	b.await(t, "the cluster link", func(ev engine.Event) bool {
		return ev.Kind == engine.EventConnection && ev.Text == engine.StatusConnected
	})
	for i := 0; i < 30; i++ {
		if _, err := a.Send(ctx, b.login, fmt.Sprintf("line %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	b.await(t, "the sender's presence", func(ev engine.Event) bool {
		return ev.Kind == engine.EventPresence && ev.Contact == a.login && ev.Text != engine.PresenceOffline
	})
	b.await(t, "the 30th message", func(ev engine.Event) bool { return ev.Kind == engine.EventMessage && ev.Body == "line 29" })
	// The 30th sent need not be the 30th to arrive: the first messages go
	// through a relay, later ones directly, and one in flight on the relay
	// when its connection closes is sent again directly. History is in
	// the order of arrival; wait for all 30.
	var conv engine.Conversation
	ct.Eventually(t, wait, func() error {
		convs, err := b.Conversations()
		if err != nil || len(convs) != 1 {
			return fmt.Errorf("conversations: %+v %v", convs, err)
		}
		conv = convs[0]
		if conv.Peer != a.login || conv.Unread != 30 || conv.Last == nil || conv.Presence == engine.PresenceOffline {
			return fmt.Errorf("the conversation: %+v", conv)
		}
		return nil
	})
	// Pages of ten, newest page first, each oldest first: every line once,
	// the newest arrival first, the conversation's Last.
	var seen []string
	var seqs []uint64
	before := uint64(0)
	for {
		page, err := b.HistoryPage(conv.ID, before, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for i := len(page) - 1; i >= 0; i-- {
			seen = append(seen, page[i].Body)
			seqs = append(seqs, page[i].Seq)
		}
		before = page[0].Seq
	}
	lines := map[string]bool{}
	for _, l := range seen {
		lines[l] = true
	}
	if len(seen) != 30 || len(lines) != 30 || !lines["line 0"] || !lines["line 29"] || seen[0] != conv.Last.Body ||
		!slices.IsSortedFunc(seqs, func(x, y uint64) int { return cmp.Compare(y, x) }) {
		t.Fatalf("paged history (newest first): %v, seqs %v; last %q", seen, seqs, conv.Last.Body)
	}
	if err := b.MarkRead(conv.ID); err != nil {
		t.Fatal(err)
	}
	if convs, _ := b.Conversations(); convs[0].Unread != 0 {
		t.Fatalf("after MarkRead: %d unread", convs[0].Unread)
	}
	// The sender's side shows its messages delivered, and no unread.
	a.await(t, "the last receipt", func(ev engine.Event) bool { return ev.Kind == engine.EventDelivered })
	convs, _ := a.Conversations()
	if len(convs) != 1 || convs[0].Unread != 0 || convs[0].Last.State == engine.StateReceived {
		t.Fatalf("the sender's conversation: %+v", convs)
	}
	// The sender's history says how each of its messages left.
	page, _ := a.HistoryPage(convs[0].ID, 0, 1)
	if len(page) != 1 || (page[0].Via != engine.ViaDirect && page[0].Via != engine.ViaRelay) {
		t.Fatalf("the last message left %+v", page)
	}
	contacts, err := b.Contacts()
	if err != nil || len(contacts) != 1 || contacts[0].Login != a.login || contacts[0].KeyChanged {
		t.Fatalf("contacts: %+v %v", contacts, err)
	}
	// The sender goes away: its presence ends.
	if err := a.Logout(ctx); err != nil {
		t.Fatal(err)
	}
	b.await(t, "the sender gone", func(ev engine.Event) bool {
		return ev.Kind == engine.EventPresence && ev.Contact == a.login && ev.Text == engine.PresenceOffline
	})
}
