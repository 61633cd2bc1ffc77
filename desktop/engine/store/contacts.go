package store

import (
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Contact is someone whose identity key this profile pinned.
type Contact struct {
	LoginID  string    `json:"login_id"`
	Identity []byte    `json:"identity"`
	PeerID   string    `json:"peer_id"`
	PinnedAt time.Time `json:"pinned_at"`
	// PendingIdentity is a changed key the directory now gives; messages
	// to the contact wait until the person accepts it (Trust).
	PendingIdentity []byte `json:"pending_identity,omitempty"`
	PendingPeerID   string `json:"pending_peer_id,omitempty"`
}

// Contact returns a pinned contact or ErrNotFound.
func (s *Store) Contact(login string) (*Contact, error) {
	var c Contact
	if err := s.get("contact/"+login, &c); err != nil {
		return nil, err
	}
	return &c, nil
}

// ContactIDs lists every pinned contact's login id.
func (s *Store) ContactIDs() []string {
	var out []string
	s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("contact/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			out = append(out, string(it.Item().Key()[len("contact/"):]))
		}
		return nil
	})
	return out
}

// SaveContact pins or updates a contact.
func (s *Store) SaveContact(c *Contact) error { return s.put("contact/"+c.LoginID, c) }

// SetWatchTicket keeps the cluster's ticket for watching login's key
// changes (a look-up gives one).
func (s *Store) SetWatchTicket(login string, ticket []byte) error {
	return s.put("watch/"+login, ticket)
}

// WatchTicket is the kept ticket for login, or nil.
func (s *Store) WatchTicket(login string) []byte {
	var t []byte
	if err := s.get("watch/"+login, &t); err != nil {
		return nil
	}
	return t
}
