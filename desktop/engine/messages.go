package engine

import (
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/e2em/e2em/desktop/engine/store"
)

// DeliveryState is where a message is: one of yours queued, sent or
// delivered, or one you received.
type DeliveryState string

// Delivery states.
const (
	StateQueued    DeliveryState = store.StateQueued
	StateSent      DeliveryState = store.StateSent
	StateDelivered DeliveryState = store.StateDelivered
	StateReceived  DeliveryState = store.StateReceived
)

// Message is one line of history, as the faces show it.
type Message struct {
	ID       string        `json:"id"`
	Seq      uint64        `json:"seq"`             // its number in the history (HistoryPage's before)
	Peer     string        `json:"peer,omitempty"`  // the other person (a direct message)
	Group    string        `json:"group,omitempty"` // a group message's group
	From     string        `json:"from"`
	Body     string        `json:"body"`
	Sent     time.Time     `json:"sent"`
	Outgoing bool          `json:"outgoing"`
	State    DeliveryState `json:"state"`
	Via      string        `json:"via,omitempty"`  // how one of yours left: ViaDirect, ViaRelay, ViaMailbox
	File     *FileRef      `json:"file,omitempty"` // a file the message carries
}

// FileRef is the file a message carries.
type FileRef struct {
	Transfer string `json:"transfer"`
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Path     string `json:"path,omitempty"` // where a received file was saved
}

func messageOf(m *store.Message) Message {
	out := Message{ID: m.ID, Seq: m.StoredSeq, Peer: m.Peer, Group: m.Group, From: m.From, Body: m.Body, Sent: m.Sent,
		Outgoing: m.Outgoing, State: DeliveryState(m.State), Via: m.Via}
	if m.File != nil {
		out.File = &FileRef{Transfer: m.File.Transfer, Name: m.File.Name, Size: m.File.Size, Path: m.File.Path}
	}
	return out
}

func messagesOf(ms []*store.Message) []Message {
	out := make([]Message, len(ms))
	for i, m := range ms {
		out[i] = messageOf(m)
	}
	return out
}

// Line is the message as History prints it, on one line: time, who,
// text (its control characters written out, see Printable), and the
// delivery state of yours.
func (m Message) Line() string {
	who := m.From
	if m.Group != "" {
		who = m.Group + " : " + m.From
	}
	s := fmt.Sprintf("%s %s : %s", m.Sent.Format("2006-01-02 15:04"), Printable(who), Printable(m.Body))
	if m.Outgoing {
		s += " [" + string(m.State) + "]"
	}
	return s
}

// Printable writes out the control characters of text someone else wrote
// (\n, \x1b, …), so that printed on a terminal it stays one line of
// text: it cannot forge lines that look like other people's messages, nor
// move the cursor, change colours or retitle the window. Other characters,
// any script, stay as they are.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
