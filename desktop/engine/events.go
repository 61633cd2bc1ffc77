package engine

import "time"

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
}
