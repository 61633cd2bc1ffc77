package server

import (
	"errors"
	"sync"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store"
)

// subscriberBuffer is how many events a slow client may fall behind before
// its stream is ended (it reconnects and fetches its mail again).
const subscriberBuffer = 256

// MaxStreamsPerLogin bounds the Events streams one account holds open on
// one coordinator (a client needs one; a few cover reconnects).
const MaxStreamsPerLogin = 8

// Hub fans the state machine's events out to open Events streams. Publish
// never blocks: it runs on the Raft apply path, and finds the streams an
// event concerns through indexes (by login, by watched login) instead of
// scanning every stream.
type Hub struct {
	mu        sync.Mutex
	byLogin   map[string]map[*Subscriber]struct{}
	watchers  map[string]map[*Subscriber]struct{}
	bySession map[string]map[*Subscriber]struct{}
	members   func(group string) []string
}

// Subscriber is one open Events stream.
type Subscriber struct {
	C       chan *api.Event
	login   string
	session string
	watch   []string
	gone    bool
	revoked bool // its session was logged out (C is closed)
}

// NewHub makes a hub; members answers who is in a group.
func NewHub(members func(group string) []string) *Hub {
	return &Hub{byLogin: map[string]map[*Subscriber]struct{}{}, watchers: map[string]map[*Subscriber]struct{}{},
		bySession: map[string]map[*Subscriber]struct{}{}, members: members}
}

// SetMembers sets how the hub learns who is in a group (the store opens after
// the hub exists, since the store publishes into it).
func (h *Hub) SetMembers(members func(group string) []string) {
	h.mu.Lock()
	h.members = members
	h.mu.Unlock()
}

// ErrTooManyStreams refuses a stream past MaxStreamsPerLogin.
var ErrTooManyStreams = errors.New("too many event streams open for this account")

// Subscribe opens a stream for login's session, watching the key changes
// of watch. The stream ends (C closes, Revoked says why) when the session
// is logged out.
func (h *Hub) Subscribe(login, session string, watch []string) (*Subscriber, error) {
	s := &Subscriber{C: make(chan *api.Event, subscriberBuffer), login: login, session: session, watch: watch}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.byLogin[login]) >= MaxStreamsPerLogin {
		return nil, ErrTooManyStreams
	}
	add(h.byLogin, login, s)
	add(h.bySession, session, s)
	for _, w := range watch {
		add(h.watchers, w, s)
	}
	eventSubscribers.Inc()
	return s, nil
}

func add(index map[string]map[*Subscriber]struct{}, key string, s *Subscriber) {
	if index[key] == nil {
		index[key] = map[*Subscriber]struct{}{}
	}
	index[key][s] = struct{}{}
}

func remove(index map[string]map[*Subscriber]struct{}, key string, s *Subscriber) {
	delete(index[key], s)
	if len(index[key]) == 0 {
		delete(index, key)
	}
}

// Unsubscribe closes a stream.
func (h *Hub) Unsubscribe(s *Subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.byLogin[s.login][s]; ok {
		remove(h.byLogin, s.login, s)
		remove(h.bySession, s.session, s)
		for _, w := range s.watch {
			remove(h.watchers, w, s)
		}
		eventSubscribers.Dec()
	}
	h.drop(s)
}

func (h *Hub) drop(s *Subscriber) {
	if !s.gone {
		s.gone = true
		close(s.C)
	}
}

// Revoked says whether s ended because its session was logged out.
func (h *Hub) Revoked(s *Subscriber) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return s.revoked
}

// Publish delivers one state machine event to the streams it concerns.
func (h *Hub) Publish(e store.Event) {
	var members []string
	if e.Group != nil {
		h.mu.Lock()
		lookup := h.members
		h.mu.Unlock()
		if lookup != nil {
			members = lookup(e.Group.Name) // a read, outside the lock
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var ev *api.Event
	var to []map[*Subscriber]struct{}
	switch {
	case e.Mail != nil:
		ev = &api.Event{Kind: &api.Event_Mail{Mail: &api.MailWaiting{Seq: e.Mail.Seq, From: e.Mail.From}}}
		to = append(to, h.byLogin[e.Mail.To])
	case e.Group != nil:
		ev = &api.Event{Kind: &api.Event_Group{Group: &api.GroupChanged{Name: e.Group.Name, LoginId: e.Group.LoginID, Change: e.Group.Change}}}
		seen := map[string]bool{}
		for _, m := range append(members, e.Group.LoginID) {
			if !seen[m] {
				seen[m] = true
				to = append(to, h.byLogin[m])
			}
		}
	case e.Keys != nil:
		ev = &api.Event{Kind: &api.Event_Keys{Keys: &api.KeysChanged{Keys: e.Keys}}}
		to = append(to, h.watchers[e.Keys.LoginId])
	case e.Revoked != nil:
		for s := range h.bySession[string(e.Revoked)] {
			s.revoked = true
			h.drop(s)
		}
		return
	default:
		return
	}
	for _, set := range to {
		for s := range set {
			if s.gone {
				continue
			}
			select {
			case s.C <- ev:
			default:
				h.drop(s)
			}
		}
	}
}
