package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"

	"github.com/dgraph-io/badger/v4"
)

// Outgoing is a queued message not yet handed to the network for good.
type Outgoing struct {
	Seq     uint64 `json:"seq"`
	ID      string `json:"id"`
	To      string `json:"to"`
	Group   string `json:"group,omitempty"`
	Body    string `json:"body"`
	SentAt  int64  `json:"sent_at"`
	Payload []byte `json:"payload"` // the encoded wire.Payload
	// Kind is "" for a text, KindFileOffer for a file's manifest and
	// KindControl for a file's result or cancellation (no history line).
	Kind     string `json:"kind,omitempty"`
	Transfer string `json:"transfer,omitempty"` // the file transfer it concerns
}

// Kinds of queued deliveries besides texts.
const (
	KindFileOffer = "file_offer"
	KindControl   = "control"
)

func (s *Store) enqueue(txn *badger.Txn, msgs []*Outgoing) error {
	for _, o := range msgs {
		seq, err := s.out.next()
		if err != nil {
			return err
		}
		o.Seq = seq
		b, err := json.Marshal(o)
		if err != nil {
			return err
		}
		if err := txn.Set(seqKey("out/", seq), b); err != nil {
			return err
		}
		// An index by recipient and id, so an acknowledgement finds its
		// queue entry without reading the whole queue.
		if err := txn.Set(outIndexKey(o.To, o.ID), binary.BigEndian.AppendUint64(nil, seq)); err != nil {
			return err
		}
	}
	return nil
}

func outIndexKey(to, id string) []byte { return []byte("outidx/" + to + "\x00" + id) }

// acknowledged removes the queue entry of message id to recipient to, if
// it is still queued, and reports whether it was.
func acknowledged(txn *badger.Txn, to, id string) (bool, error) {
	item, err := txn.Get(outIndexKey(to, id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	seqb, err := item.ValueCopy(nil)
	if err != nil || len(seqb) != 8 {
		return false, errors.New("damaged profile: queue index")
	}
	if err := txn.Delete(outIndexKey(to, id)); err != nil {
		return false, err
	}
	return true, txn.Delete(seqKey("out/", binary.BigEndian.Uint64(seqb)))
}

// Queue lists queued messages in the order they were queued.
func (s *Store) Queue() ([]*Outgoing, error) {
	var out []*Outgoing
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("out/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var o Outgoing
			if err := it.Item().Value(func(b []byte) error { return decode(b, &o) }); err != nil {
				return err
			}
			out = append(out, &o)
		}
		return nil
	})
	return out, err
}

// Dequeue removes a message from the queue once the network took it.
func (s *Store) Dequeue(o *Outgoing) error {
	return s.update(func(txn *badger.Txn) error {
		if err := txn.Delete(outIndexKey(o.To, o.ID)); err != nil {
			return err
		}
		return txn.Delete(seqKey("out/", o.Seq))
	})
}

// MailCursor is the last mailbox sequence number this profile processed.
func (s *Store) MailCursor() (uint64, error) {
	var c uint64
	err := s.get("mailcursor", &c)
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	}
	return c, err
}

// SetMailCursor records mailbox progress.
func (s *Store) SetMailCursor(seq uint64) error { return s.put("mailcursor", seq) }

// HeldMail is a mailbox envelope kept in the profile because its sender's
// identity key changed and is not trusted yet: the mailbox moves past it,
// and it is opened when the person trusts the new key.
type HeldMail struct {
	From     string `json:"from"`
	Seq      uint64 `json:"seq"`
	Envelope []byte `json:"envelope"`
}

func heldKey(from string, seq uint64) []byte {
	return seqKey("heldmail/"+from+"\x00", seq)
}

// MaxHeldPerSender bounds what one untrusted sender can park in the
// profile; past it their oldest held envelope makes room.
const MaxHeldPerSender = 500

// HoldMail keeps an envelope until its sender is trusted again, dropping
// the sender's oldest held one when MaxHeldPerSender are already held.
func (s *Store) HoldMail(m *HeldMail) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	prefix := []byte("heldmail/" + m.From + "\x00")
	return s.update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		var keys [][]byte
		for it.Rewind(); it.Valid(); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		it.Close()
		for len(keys) >= MaxHeldPerSender {
			if err := txn.Delete(keys[0]); err != nil {
				return err
			}
			keys = keys[1:]
		}
		return txn.Set(heldKey(m.From, m.Seq), b)
	})
}

// HeldMailFrom lists what is held from a sender, in mailbox order.
func (s *Store) HeldMailFrom(from string) ([]*HeldMail, error) {
	return scanAll[HeldMail](s, "heldmail/"+from+"\x00")
}

// ReleaseMail forgets a held envelope (it was opened).
func (s *Store) ReleaseMail(from string, seq uint64) error {
	return s.update(func(txn *badger.Txn) error { return txn.Delete(heldKey(from, seq)) })
}
