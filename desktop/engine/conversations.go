package engine

import (
	"sort"
	"strings"
	"time"
)

// Conversation is a person or a group you have messages with, as a list
// of conversations shows it.
type Conversation struct {
	ID     string   `json:"id"`              // "@bob102" or "#g1": what MarkRead and HistoryPage take
	Peer   string   `json:"peer,omitempty"`  // a conversation with a person
	Group  string   `json:"group,omitempty"` // a group's conversation (as its messages name it)
	Last   *Message `json:"last,omitempty"`
	Unread int      `json:"unread"`
	// Presence of the person: PresenceOffline, PresenceDirect or
	// PresenceRelayed (empty for a group).
	Presence string `json:"presence,omitempty"`
	// KeyChanged: the person's identity key changed and the new one is
	// not trusted yet; messages to them wait (SafetyNumber, then Trust).
	KeyChanged bool `json:"key_changed,omitempty"`
}

// Presence of a contact: whether a session with them is open now, and
// how it goes.
const (
	PresenceOffline = "offline"
	PresenceDirect  = "direct"
	PresenceRelayed = "relayed"
)

// Conversations lists your conversations, the most recent first.
func (e *Engine) Conversations() ([]Conversation, error) {
	if s, err := e.current(); err == nil {
		e.flushStates(s)
	}
	infos, err := e.store.Conversations()
	if err != nil {
		return nil, err
	}
	out := make([]Conversation, 0, len(infos))
	for _, in := range infos {
		c := Conversation{ID: in.Key, Unread: in.Unread}
		if in.Last != nil {
			m := messageOf(in.Last)
			c.Last = &m
		}
		if peer, ok := strings.CutPrefix(in.Key, "@"); ok {
			c.Peer, c.Presence = peer, e.presence(peer)
			if ct, err := e.store.Contact(peer); err == nil {
				c.KeyChanged = ct.PendingIdentity != nil
			}
		} else if c.Last != nil {
			c.Group = c.Last.Group
		} else {
			c.Group = strings.TrimPrefix(in.Key, "#")
		}
		out = append(out, c)
	}
	sort.SliceStable(out, func(i, j int) bool { return lastTime(out[i]).After(lastTime(out[j])) })
	return out, nil
}

func lastTime(c Conversation) time.Time {
	if c.Last == nil {
		return time.Time{}
	}
	return c.Last.Sent
}

// MarkRead marks a conversation read up to its newest message.
func (e *Engine) MarkRead(conversation string) error { return e.store.MarkRead(conversation) }

// HistoryPage returns up to n messages of a conversation (an ID from
// Conversations) stored before message number before (0: the newest),
// oldest first; Message.Seq of the first is the next page's before.
func (e *Engine) HistoryPage(conversation string, before uint64, n int) ([]Message, error) {
	if s, err := e.current(); err == nil {
		e.flushStates(s)
	}
	ms, err := e.store.HistoryBefore(conversation, before, n)
	return messagesOf(ms), err
}

// Contact is someone whose identity key this profile pinned.
type Contact struct {
	Login    string    `json:"login"`
	Presence string    `json:"presence"`
	PinnedAt time.Time `json:"pinned_at"`
	// KeyChanged: the directory gives a new identity key that is not
	// trusted yet; messages to them wait (SafetyNumber, then Trust).
	KeyChanged bool `json:"key_changed,omitempty"`
}

// Contacts lists the people whose keys are pinned, by login id.
func (e *Engine) Contacts() ([]Contact, error) {
	st := e.profile()
	if st == nil {
		return nil, ErrNotLoggedIn
	}
	var out []Contact
	for _, login := range st.ContactIDs() {
		c, err := st.Contact(login)
		if err != nil {
			return nil, err
		}
		out = append(out, Contact{Login: login, Presence: e.presence(login), PinnedAt: c.PinnedAt, KeyChanged: c.PendingIdentity != nil})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Login < out[j].Login })
	return out, nil
}

// presence is whether a session with login is open, and how.
func (e *Engine) presence(login string) string {
	s, err := e.current()
	if err != nil {
		return PresenceOffline
	}
	sess := s.msgr.Session(login)
	switch {
	case sess == nil && s.msgr.DirectlyConnected(login):
		return PresenceDirect
	case sess == nil:
		return PresenceOffline
	case sess.Relayed():
		return PresenceRelayed
	}
	return PresenceDirect
}
