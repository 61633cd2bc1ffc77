package server

import (
	"sync"

	"github.com/e2em/e2em/coord/api"
	"github.com/e2em/e2em/coord/store"
)

// subscriberBuffer is how many events a slow client may fall behind before
// its stream is ended (it reconnects and fetches its mail again).
const subscriberBuffer = 256

// Hub fans the state machine's events out to open Events streams. Publish
// never blocks: it runs on the Raft apply path.
type Hub struct {
	mu      sync.Mutex
	subs    map[*Subscriber]struct{}
	members func(group string) []string
}

// Subscriber is one open Events stream.
type Subscriber struct {
	C     chan *api.Event
	login string
	watch map[string]bool
	gone  bool
}

// NewHub makes a hub; members answers who is in a group.
func NewHub(members func(group string) []string) *Hub {
	return &Hub{subs: map[*Subscriber]struct{}{}, members: members}
}

// SetMembers sets how the hub learns who is in a group (the store opens after
// the hub exists, since the store publishes into it).
func (h *Hub) SetMembers(members func(group string) []string) {
	h.mu.Lock()
	h.members = members
	h.mu.Unlock()
}

// Subscribe opens a stream for login, watching the key changes of watch.
func (h *Hub) Subscribe(login string, watch []string) *Subscriber {
	s := &Subscriber{C: make(chan *api.Event, subscriberBuffer), login: login, watch: map[string]bool{}}
	for _, w := range watch {
		s.watch[w] = true
	}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	eventSubscribers.Inc()
	return s
}

// Unsubscribe closes a stream.
func (h *Hub) Unsubscribe(s *Subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
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

// Publish delivers one state machine event to the streams it concerns.
func (h *Hub) Publish(e store.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) == 0 {
		return
	}
	var ev *api.Event
	var to func(*Subscriber) bool
	switch {
	case e.Mail != nil:
		ev = &api.Event{Kind: &api.Event_Mail{Mail: &api.MailWaiting{Seq: e.Mail.Seq, From: e.Mail.From}}}
		to = func(s *Subscriber) bool { return s.login == e.Mail.To }
	case e.Group != nil:
		members := map[string]bool{e.Group.LoginID: true}
		if h.members != nil {
			for _, m := range h.members(e.Group.Name) {
				members[m] = true
			}
		}
		ev = &api.Event{Kind: &api.Event_Group{Group: &api.GroupChanged{Name: e.Group.Name, LoginId: e.Group.LoginID, Change: e.Group.Change}}}
		to = func(s *Subscriber) bool { return members[s.login] }
	case e.Keys != nil:
		ev = &api.Event{Kind: &api.Event_Keys{Keys: &api.KeysChanged{Keys: e.Keys}}}
		to = func(s *Subscriber) bool { return s.watch[e.Keys.LoginId] }
	default:
		return
	}
	for s := range h.subs {
		if s.gone || !to(s) {
			continue
		}
		select {
		case s.C <- ev:
		default:
			h.drop(s)
		}
	}
}
