package store

import (
	"encoding/json"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Transfer states, of a whole transfer and of one recipient's part.
const (
	XferPreparing = "preparing" // hashing the file before the offer goes
	XferOffered   = "offered"   // the offer is queued or sent; no chunk asked for yet
	XferWaiting   = "waiting"   // the recipient is offline and the file waits for both to be online
	XferActive    = "active"    // chunks are moving (a stream or the mailbox)
	XferDone      = "done"
	XferFailed    = "failed"
	XferCancelled = "cancelled"
)

// XferFinished reports whether a state is final.
func XferFinished(state string) bool {
	return state == XferDone || state == XferFailed || state == XferCancelled
}

// OutTransfer is a file this profile sends: where it is read from, what
// it was when offered (so a change is noticed), its key, and each
// recipient's progress.
type OutTransfer struct {
	ID         string          `json:"id"`
	Path       string          `json:"path"`
	Name       string          `json:"name"`
	Size       int64           `json:"size"`
	ModTime    int64           `json:"mtime"` // Unix nanoseconds
	ChunkSize  uint32          `json:"chunk_size"`
	SHA256     []byte          `json:"sha256,omitempty"`
	FileKey    []byte          `json:"file_key"`
	Groups     []string        `json:"groups,omitempty"`
	Created    time.Time       `json:"created"`
	State      string          `json:"state"`
	Error      string          `json:"error,omitempty"`
	Recipients []*OutRecipient `json:"recipients"`
}

// OutRecipient is one recipient's part of an outgoing transfer.
type OutRecipient struct {
	Login  string `json:"login"`
	Group  string `json:"group,omitempty"` // the group it was sent to them as
	Token  []byte `json:"token"`
	State  string `json:"state"`
	Via    string `json:"via,omitempty"`
	Stored int64  `json:"stored"` // bytes the recipient said it stored
	Sent   int64  `json:"sent"`   // bytes sent on streams, resends included
	Mailed uint64 `json:"mailed"` // chunks put in the mailbox (the next to put)
	Error  string `json:"error,omitempty"`
}

// InTransfer is a file this profile receives: the offer, which chunks are
// stored in the partial file, and where it was saved.
type InTransfer struct {
	Key       string    `json:"key"` // local: names the partial file
	From      string    `json:"from"`
	ID        string    `json:"id"` // the sender's transfer id
	Name      string    `json:"name"`
	Size      int64     `json:"size"`
	ChunkSize uint32    `json:"chunk_size"`
	SHA256    []byte    `json:"sha256"`
	FileKey   []byte    `json:"file_key"`
	Token     []byte    `json:"token"`
	Group     string    `json:"group,omitempty"`
	Created   time.Time `json:"created"`
	State     string    `json:"state"`
	Have      []byte    `json:"have"` // bit i set: chunk i is stored
	Via       string    `json:"via,omitempty"`
	Path      string    `json:"path,omitempty"` // where it was saved
	Error     string    `json:"error,omitempty"`
}

const (
	prefixOutXfer = "xfer/out/"
	prefixInXfer  = "xfer/in/"
)

// PutOutTransfer stores (or updates) an outgoing transfer.
func (s *Store) PutOutTransfer(t *OutTransfer) error { return s.put(prefixOutXfer+t.ID, t) }

// PutInTransfer stores (or updates) an incoming transfer.
func (s *Store) PutInTransfer(t *InTransfer) error { return s.put(prefixInXfer+t.Key, t) }

// InTransfer returns an incoming transfer by its local key, or ErrNotFound.
func (s *Store) InTransfer(key string) (*InTransfer, error) {
	var t InTransfer
	if err := s.get(prefixInXfer+key, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// OutTransfers lists outgoing transfers.
func (s *Store) OutTransfers() ([]*OutTransfer, error) { return scanAll[OutTransfer](s, prefixOutXfer) }

// InTransfers lists incoming transfers.
func (s *Store) InTransfers() ([]*InTransfer, error) { return scanAll[InTransfer](s, prefixInXfer) }

// scanAll decodes every record under prefix.
func scanAll[T any](s *Store, prefix string) ([]*T, error) {
	var out []*T
	err := scan(s, prefix, func(b []byte) error {
		var v T
		if err := decode(b, &v); err != nil {
			return err
		}
		out = append(out, &v)
		return nil
	})
	return out, err
}

func scan(s *Store, prefix string, each func([]byte) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefix), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := it.Item().Value(each); err != nil {
				return err
			}
		}
		return nil
	})
}

// QueueFileOffers records a prepared transfer, the history line of each
// group of its recipients and the offers to queue, in one transaction: a
// crash leaves the transfer either still to prepare or offered, never
// offered twice.
func (s *Store) QueueFileOffers(t *OutTransfer, msgs []*Message, deliveries [][]*Outgoing) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error {
		if err := txn.Set([]byte(prefixOutXfer+t.ID), b); err != nil {
			return err
		}
		for i, m := range msgs {
			if _, err := s.addMessage(txn, m); err != nil {
				return err
			}
			if err := s.enqueue(txn, deliveries[i]); err != nil {
				return err
			}
		}
		return nil
	})
}
