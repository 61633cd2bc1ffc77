package engine

import (
	"sync"
	"time"
)

// EventKind names what happened.
type EventKind string

// The events the faces render.
const (
	// EventMessage: a message arrived (From, Group, Body, ID).
	EventMessage EventKind = "message"
	// EventDelivered: a recipient acknowledged a message (To, ID).
	EventDelivered EventKind = "delivered"
	// EventSent: a message left this machine, directly, through a relay
	// or into the mailbox (To, ID, Via).
	EventSent EventKind = "sent"
	// EventKeyChanged: a contact's identity key is not the pinned one;
	// messages to them wait until Trust (Contact).
	EventKeyChanged EventKind = "key_changed"
	// EventSecurity: something was refused for a security reason: a
	// tampered, replayed or mis-keyed record (From, Text).
	EventSecurity EventKind = "security"
	// EventGroup: someone created, joined or left a group you are in
	// (Group, From, Text = the change).
	EventGroup EventKind = "group"
	// EventWaiting: a queued message cannot go yet (To, Text = why).
	EventWaiting EventKind = "waiting"
	// EventStatus: something worth a line in the log of the session.
	EventStatus EventKind = "status"

	// EventConnection: the link to the cluster came or went (Text:
	// StatusConnected or StatusDisconnected; Body: why it went).
	EventConnection EventKind = "connection"
	// EventPresence: a contact's session opened, moved or ended (Contact,
	// Text: PresenceDirect, PresenceRelayed or PresenceOffline).
	EventPresence EventKind = "presence"
	// EventLogin: someone logged in or out here (Text: StatusLoggedIn or
	// StatusLoggedOut, From: who).
	EventLogin EventKind = "login"

	// File events carry the transfer as it is now (Transfer; ID is its id).
	// EventFileOffered: a file's offer went out, or one came in (Text).
	EventFileOffered EventKind = "file_offered"
	// EventFileProgress: bytes moved (at most ten a second per transfer).
	EventFileProgress EventKind = "file_progress"
	// EventFileWaiting: a recipient is offline and the file waits (Text
	// says where: in their mailbox, or here until both are online).
	EventFileWaiting EventKind = "file_waiting"
	// EventFileDone: every recipient has the whole file (outgoing), or the
	// file is checked and saved (incoming; Text says where).
	EventFileDone EventKind = "file_done"
	// EventFileFailed: the transfer, or a recipient's part, failed (Text).
	EventFileFailed EventKind = "file_failed"
	// EventFileCancelled: either side cancelled the transfer (Text).
	EventFileCancelled EventKind = "file_cancelled"
)

// Texts of the status events.
const (
	StatusConnected    = "connected"
	StatusDisconnected = "disconnected"
	StatusLoggedIn     = "logged in"
	StatusLoggedOut    = "logged out"
)

// Via says how a message left.
const (
	ViaDirect  = "direct"
	ViaRelay   = "relay"
	ViaMailbox = "mailbox"
)

// Event is one thing that happened.
type Event struct {
	Kind EventKind `json:"type"`
	Time time.Time `json:"time"` // when it happened; for a message, when it was sent
	// Received is when a message arrived and was stored here.
	Received time.Time `json:"received,omitzero"`
	ID       string    `json:"id,omitempty"`
	From     string    `json:"from,omitempty"`
	To       string    `json:"to,omitempty"`
	Group    string    `json:"group,omitempty"`
	Body     string    `json:"body,omitempty"`
	Contact  string    `json:"contact,omitempty"`
	Via      string    `json:"via,omitempty"`
	Relay    string    `json:"relay,omitempty"` // the relay's peer id, for Via relay
	Text     string    `json:"text,omitempty"`
	Transfer *Transfer `json:"transfer,omitempty"` // file events
	// Seq numbers the engine's events from 1, in the order they happened.
	Seq uint64 `json:"seq"`
	// Missed is how many events an EventMissed stands for.
	Missed uint64 `json:"missed,omitempty"`
}

// EventMissed tells a subscriber that it fell behind and Missed events
// numbered before this one are gone: it should reload what it shows
// (Conversations, Transfers, History) rather than patch it.
const EventMissed EventKind = "missed"

// eventLog numbers every event and keeps the latest ones, so that each
// subscriber reads at its own pace (as syncthing's event API does): a slow
// one holds nobody up and learns exactly how many it missed.
type eventLog struct {
	mu     sync.Mutex
	ring   []Event // ring[seq % len(ring)] holds event seq
	last   uint64  // the number of the newest event (0: none yet)
	notify chan struct{}
	closed bool
}

// eventLogSize is how many events a subscriber may fall behind by.
const eventLogSize = 8192

func newEventLog() *eventLog {
	return &eventLog{ring: make([]Event, eventLogSize), notify: make(chan struct{})}
}

func (l *eventLog) add(ev Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.last++
	ev.Seq = l.last
	l.ring[l.last%uint64(len(l.ring))] = ev
	close(l.notify)
	l.notify = make(chan struct{})
}

// since returns up to max of the events after seq that are still kept,
// how many after seq are gone, a channel closed when more arrive, and
// whether the log is closed. (A few at a time: a reader that stops holds
// no copy of the log, and learns what it missed when it comes back.)
func (l *eventLog) since(seq uint64, max int) (evs []Event, missed uint64, more <-chan struct{}, closed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	oldest := uint64(1)
	if l.last > uint64(len(l.ring)) {
		oldest = l.last - uint64(len(l.ring)) + 1
	}
	if seq+1 < oldest {
		missed = oldest - seq - 1
		seq = oldest - 1
	}
	for s := seq + 1; s <= l.last && len(evs) < max; s++ {
		evs = append(evs, l.ring[s%uint64(len(l.ring))])
	}
	return evs, missed, l.notify, l.closed
}

func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.notify)
	}
}

// Subscription is one reader of the engine's events, numbered from the
// moment it subscribed. Its channel closes when it is closed or the engine
// is.
type Subscription struct {
	ch   chan Event
	stop chan struct{}
	once sync.Once
}

// Subscribe starts a new numbered stream of events. Read it continuously;
// one that falls more than eventLogSize events behind gets an EventMissed
// saying how many, then goes on from the oldest kept.
func (e *Engine) Subscribe() *Subscription {
	e.events.mu.Lock()
	now := e.events.last
	e.events.mu.Unlock()
	return e.subscribe(now)
}

// subscribe streams the events after number next.
func (e *Engine) subscribe(next uint64) *Subscription {
	sub := &Subscription{ch: make(chan Event, 64), stop: make(chan struct{})}
	go func() {
		defer close(sub.ch)
		for {
			evs, missed, more, closed := e.events.since(next, cap(sub.ch))
			if missed > 0 {
				first := Event{Kind: EventMissed, Time: time.Now(), Missed: missed, Seq: next + missed}
				select {
				case sub.ch <- first:
				case <-sub.stop:
					return
				}
				next += missed
			}
			for _, ev := range evs {
				select {
				case sub.ch <- ev:
				case <-sub.stop:
					return
				}
				next = ev.Seq
			}
			if len(evs) == cap(sub.ch) {
				continue // more may be there already
			}
			if closed && len(evs) == 0 {
				return
			}
			select {
			case <-more:
			case <-sub.stop:
				return
			}
		}
	}()
	return sub
}

// Events is the subscription's channel.
func (s *Subscription) Events() <-chan Event { return s.ch }

// Close ends the subscription; its channel closes soon after.
func (s *Subscription) Close() { s.once.Do(func() { close(s.stop) }) }
