package store

import (
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// keySession holds the cluster session the profile keeps between runs.
const keySession = "session"

// SavedSession is a cluster session kept in the (encrypted) profile, so
// that logging in again while it is valid — the app restarted, the machine
// woke up — costs the cluster no password hash.
type SavedSession struct {
	LoginID string
	Token   string
	Expires time.Time
}

// SaveSession keeps ss for the next log-in.
func (s *Store) SaveSession(ss SavedSession) error { return s.put(keySession, ss) }

// SavedSession is the kept session, or the zero value.
func (s *Store) SavedSession() (SavedSession, error) {
	var ss SavedSession
	err := s.get(keySession, &ss)
	if errors.Is(err, ErrNotFound) {
		return SavedSession{}, nil
	}
	return ss, err
}

// ForgetSession drops the kept session (logged out, or refused).
func (s *Store) ForgetSession() error {
	return s.update(func(txn *badger.Txn) error { return txn.Delete([]byte(keySession)) })
}

// keyDeviceTicket holds the cluster's proof that this device logged in to
// the profile's account; unlike the session it outlives a log-out.
const keyDeviceTicket = "device-ticket"

// SaveDeviceTicket keeps the cluster's latest device ticket.
func (s *Store) SaveDeviceTicket(ticket []byte) error { return s.put(keyDeviceTicket, ticket) }

// DeviceTicket is the kept device ticket, or nil.
func (s *Store) DeviceTicket() ([]byte, error) {
	var t []byte
	err := s.get(keyDeviceTicket, &t)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	return t, err
}
