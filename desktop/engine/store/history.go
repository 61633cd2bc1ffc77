package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Message is one line of history.
type Message struct {
	ID        string    `json:"id"`
	Peer      string    `json:"peer"`  // the other person (DM) or the sender (incoming group)
	Group     string    `json:"group"` // set for group messages
	From      string    `json:"from"`
	Body      string    `json:"body"`
	Sent      time.Time `json:"sent"`
	Outgoing  bool      `json:"outgoing"`
	State     string    `json:"state"`         // queued, sent, delivered (outgoing); received
	Via       string    `json:"via,omitempty"` // how an outgoing message left: direct, relay, mailbox
	StoredSeq uint64    `json:"seq"`
	File      *FileRef  `json:"file,omitempty"` // set when the message is a file
}

// FileRef is the file a message carries: the transfer that moves it, and
// for a received file where it was saved.
type FileRef struct {
	Transfer string `json:"transfer"`
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Path     string `json:"path,omitempty"`
}

// Delivery states of an outgoing message.
const (
	StateQueued    = "queued"
	StateSent      = "sent"
	StateDelivered = "delivered"
	StateReceived  = "received"
)

// Conversation is the history key a message belongs to: the group for
// group messages, the other person for direct ones.
func (m *Message) Conversation() string {
	if m.Group != "" {
		return "#" + strings.ToLower(m.Group)
	}
	return "@" + m.Peer
}

// AddMessage stores a message once: false if its id (for this
// conversation) is already there, which is how a message delivered twice
// shows once.
func (s *Store) AddMessage(m *Message) (bool, error) {
	added := false
	err := s.update(func(txn *badger.Txn) error {
		var err error
		added, err = s.addMessage(txn, m)
		return err
	})
	return added, err
}

func (s *Store) addMessage(txn *badger.Txn, m *Message) (bool, error) {
	idKey := dedupKey(m)
	if _, err := txn.Get(idKey); err == nil {
		return false, nil
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return false, err
	}
	seq, err := s.history.next()
	if err != nil {
		return false, err
	}
	m.StoredSeq = seq
	b, err := json.Marshal(m)
	if err != nil {
		return false, err
	}
	hk := historyKey(m.Conversation(), seq)
	if err := txn.Set(hk, b); err != nil {
		return false, err
	}
	if err := indexConversation(txn, m.Conversation()); err != nil {
		return false, err
	}
	if m.Outgoing {
		if err := txn.Set([]byte("outconv/"+m.ID), []byte(m.Conversation())); err != nil {
			return false, err
		}
	}
	return true, txn.Set(idKey, hk)
}

// dedupKey is what makes a message the same message when it comes again:
// its id within its conversation, and for a group message someone else
// sent, its sender too. Ids are chosen by senders: without the sender, a
// member who saw Alice's id could send her own message under it to
// someone first, who would then drop Alice's as a repeat.
func dedupKey(m *Message) []byte {
	if m.Group != "" && !m.Outgoing {
		return msgIDKey(m.Conversation(), m.From+"\x00"+m.ID)
	}
	return msgIDKey(m.Conversation(), m.ID)
}

// AddOutgoing stores a message you send and queues its deliveries in one
// transaction: after it returns, a crash loses neither. A nil m queues
// deliveries that have no line in the history (a file's control messages).
func (s *Store) AddOutgoing(m *Message, deliveries ...*Outgoing) error {
	return s.update(func(txn *badger.Txn) error {
		if m != nil {
			if _, err := s.addMessage(txn, m); err != nil {
				return err
			}
		}
		return s.enqueue(txn, deliveries)
	})
}

func conversationOf(txn *badger.Txn, id string) (string, error) {
	item, err := txn.Get([]byte("outconv/" + id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", err
	}
	b, err := item.ValueCopy(nil)
	return string(b), err
}

// setState changes the delivery state of a stored outgoing message. A state
// never goes backwards (delivered stays delivered).
func setState(txn *badger.Txn, conversation, id, state, via string) error {
	item, err := txn.Get(msgIDKey(conversation, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	hk, err := item.ValueCopy(nil)
	if err != nil {
		return err
	}
	item, err = txn.Get(hk)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	var m Message
	if err := item.Value(func(b []byte) error { return decode(b, &m) }); err != nil {
		return err
	}
	if rank(state) < rank(m.State) || (rank(state) == rank(m.State) && (via == "" || via == m.Via)) {
		return nil
	}
	m.State = state
	if via != "" {
		m.Via = via // how it last left (a group message: to the last member)
	}
	b, err := json.Marshal(&m)
	if err != nil {
		return err
	}
	return txn.Set(hk, b)
}

// Delivery is news about an outgoing message, found by ID: it left on a
// session (StateSent), or its recipient To acknowledged it
// (StateDelivered: its queue entry for To goes too).
type Delivery struct {
	To, ID, State string
	Via           string // for StateSent: direct, relay or mailbox
}

// RecordDeliveries applies deliveries in one transaction and reports for
// each whether it concerned a message of this profile.
func (s *Store) RecordDeliveries(ds []Delivery) ([]bool, error) {
	ours := make([]bool, len(ds))
	err := s.update(func(txn *badger.Txn) error {
		clear(ours) // a retry starts over
		for i, d := range ds {
			if d.State == StateDelivered {
				if _, err := acknowledged(txn, d.To, d.ID); err != nil {
					return err
				}
			}
			conv, err := conversationOf(txn, d.ID)
			if errors.Is(err, ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if err := setState(txn, conv, d.ID, d.State, d.Via); errors.Is(err, ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			ours[i] = true
		}
		return nil
	})
	return ours, err
}

func rank(state string) int {
	switch state {
	case StateQueued:
		return 1
	case StateSent:
		return 2
	case StateDelivered:
		return 3
	}
	return 0
}

// History returns the last n messages of a conversation, oldest first.
func (s *Store) History(conversation string, n int) ([]*Message, error) {
	return s.HistoryBefore(conversation, 0, n)
}

// Search finds messages whose text contains q (case-insensitively), in the
// order they were stored.
func (s *Store) Search(q string, limit int) ([]*Message, error) {
	q = strings.ToLower(q)
	var out []*Message
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("hist/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var m Message
			if err := it.Item().Value(func(b []byte) error { return decode(b, &m) }); err != nil {
				return err
			}
			if strings.Contains(strings.ToLower(m.Body), q) {
				out = append(out, &m)
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].StoredSeq < out[j].StoredSeq })
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, err
}

// Keys end a conversation name with a zero byte, which names cannot hold,
// so one conversation's prefix never covers another's.
func historyKey(conv string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte("hist/"+conv+"\x00"), seq)
}

func msgIDKey(conv, id string) []byte { return []byte("msgid/" + conv + "\x00" + id) }
